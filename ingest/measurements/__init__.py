"""The measurement registry: every per-checkpoint measurement is one module of this folder.

A module is a measurement when it defines `NAME`; the run engine, the `geowh ingest` and
`geowh watch` options, Ray and the live callbacks know measurements only through this registry
and the `Measurement` class (ingest/engine/plan.py). Such a module defines:

- `NAME`: the registry name (runs.kind joins the names of a run's measurements);
- `OPTIONS`: the `geowh ingest` / `geowh watch` options that turn it on (`Option`s; none when
  its settings are `IngestConfig` fields, as geometry's are);
- `build(config, options) -> Measurement | None`: the measurement that `config` (the run's
  `IngestConfig`) and `options` (the values of OPTIONS by name; absent ones are None) ask for,
  or None when they do not ask for it. It checks its settings here, before anything is written;
- its `Measurement` subclass, whose `measure(loaded, ref, config, meter)` returns `{table: rows}`.

Its tables are a migration at the end of schema.sql. The other modules here (tasks, statistics)
are the memorization measurement's parts; features/ is the geometry's.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geowh.ingest.config import IngestConfig
    from geowh.ingest.engine.plan import Measurement


@dataclass(frozen=True)
class Option:
    """A CLI option of a measurement: `geowh ingest` and `geowh watch` add it, off (None) by default."""

    name: str
    """The parameter's name: the key of `options` in `build`."""
    flag: str
    help: str
    type: type = str


@cache
def registry() -> dict[str, ModuleType]:
    """Name → module of every measurement in this folder, in the order they run on a checkpoint
    (module name order: the order of runs.kind)."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME"):
            found[module.NAME] = module
    return found


def options() -> list[Option]:
    """Every measurement's CLI options."""
    return [option for module in registry().values() for option in getattr(module, "OPTIONS", ())]


def build(config: IngestConfig, options: Mapping[str, Any], skip: Collection[str] = ()) -> list[Measurement]:
    """The measurements `config` and `options` ask for (but those named in `skip`), in registry order."""
    built = (module.build(config, options) for name, module in registry().items() if name not in skip)
    return [m for m in built if m is not None]
