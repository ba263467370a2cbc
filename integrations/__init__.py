"""Geometry from inside a training run: a Hugging Face Trainer callback, a Lightning callback, a probe.

    from geowh.integrations import GeometryCallback, GeometryLightningCallback, GeometryProbe

Each name is imported when first used, so `import geowh.integrations` needs neither
transformers' Trainer nor Lightning (an optional extra: `pip install 'geowh[lightning]'`).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "GeometryProbe": "probe",
    "GeometryCallback": "trainer",
    "GeometryLightningCallback": "lightning",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
