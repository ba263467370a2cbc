"""The CLI retypes no default: an option that a library function or config also takes defaults to
the library's value, or to None (not given: the library's default applies)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest


def _fields(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _parameters(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _library() -> dict[str, tuple[dict, ...]]:
    """Command → the defaults of what it calls (its config dataclasses, its library function)."""
    from geowh.index.build import build_index
    from geowh.ingest.config import IngestConfig, MemorizeConfig, Selection
    from geowh.ingest.engine.watch import watch
    from geowh.ingest.measurements.memorization import index_stats
    from geowh.queries.claims import claims
    from geowh.queries.correlate import correlate
    from geowh.queries.phases import phases
    from geowh.queries.plot import plot
    from geowh.repro.demo import DemoConfig
    from geowh.repro.posttrain import PosttrainConfig
    from geowh.repro.toy import ToyConfig
    from geowh.repro.train import TrainConfig
    from geowh.spectrum_math import REGISTRY

    metric_defaults = {k: v for m in REGISTRY.values() for k, v in m.defaults.items()}
    plot_defaults = _parameters(plot)
    plot_defaults["metric"] = ",".join(plot_defaults["metrics"])  # --metric is the comma-separated form
    return {
        "ingest": (_fields(IngestConfig), _fields(Selection)),
        "watch": (_fields(IngestConfig), _parameters(watch)),
        "memorize": (_fields(MemorizeConfig), _fields(Selection)),
        "metrics": (metric_defaults,),
        "recompute": (metric_defaults,),
        "phases": (_parameters(phases), _parameters(claims)),
        "correlate": (_parameters(correlate),),
        "plot": (plot_defaults,),
        "index build": (_parameters(build_index),),
        "index stats": (_parameters(index_stats),),
        "toy": (_fields(ToyConfig),),
        "train-mini": (_fields(TrainConfig),),
        "posttrain": (_fields(PosttrainConfig),),
        "demo": (_fields(DemoConfig),),
    }


def _commands() -> dict:
    from geowh.cli import app

    found = {c.name or c.callback.__name__: c.callback for c in app.registered_commands}
    for group in app.registered_groups:
        found |= {f"{group.name} {c.name}": c.callback for c in group.typer_instance.registered_commands}
    return found


@pytest.mark.parametrize("command", sorted(_library()))
def test_an_option_defaults_to_what_the_library_it_calls_takes(command):
    cli = _parameters(_commands()[command])
    checked = 0
    for defaults in _library()[command]:
        for name, value in defaults.items():
            if name in cli and name != "db":  # --db defaults to $GEOWH_DB's file, the library's None to settings
                checked += 1
                assert cli[name] is None or cli[name] == value, (
                    f"geowh {command} --{name}: {cli[name]!r}, library {value!r}")
    assert checked, f"geowh {command} shares no option with what it calls"
