"""Produces the warehouse's rows: checkpoint series → probe features → spectra and metrics.

torch and transformers are imported inside the functions that need them, never here; the names
below are imported on first use, so that `geowh.ingest.config` (what the CLI reads its defaults
from) loads nothing else.
"""

from importlib import import_module

_WHERE = {
    "load_checkpoint": "geowh.ingest.sources.models",
    "RayExecutor": "geowh.ingest.engine.cluster",
    **{name: "geowh.ingest.config" for name in ("IngestConfig", "MemorizeConfig", "Selection")},
    **{name: "geowh.ingest.engine.plan" for name in ("Measurement",)},
    **{name: "geowh.ingest.engine.executors" for name in ("Executor",)},
    **{name: "geowh.ingest.engine.run" for name in (
        "IngestSummary", "ingest", "process_checkpoint", "write_result",
    )},
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'geowh.ingest' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
