"""One progress protocol: the library tells `progress(Event)`, the CLI's one renderer draws it, and
no second shape (an `on_x` callback, `note=`, an `Events` or `Report` object) creeps back in."""

from __future__ import annotations

import importlib
import inspect
import io
import pkgutil
import re
import types
from pathlib import Path

import pytest
from tiny import save_series, write_docs

import geowh
from geowh.progress import KINDS, Event

ROOT = Path(geowh.__file__).parent
NOT_LIBRARY = {"cli", "tests", "bench", "build", "docs", "data", "runs"}
"""Folders of the checkout that are not the library (cli/ renders progress; the rest is not shipped code)."""

OLD_SHAPES = re.compile(r"^(on_\w+|note|notes|events|report|reporter|say|tell|log|callback|hook)$")
"""Parameter names of the shapes the protocol replaced (on_batch, on_event, on_wait, note, events, report, …)."""

NOT_PROGRESS = {
    ("Executor.map", "started"): "the driver writes the job's running row when an executor starts it",
    ("Serial.map", "started"): "the same hook",
    ("RayExecutor.map", "started"): "the same hook",
}
"""Callable parameters returning None that are not progress, each with why."""


def _library_modules() -> list[types.ModuleType]:
    modules = []
    for info in pkgutil.walk_packages([str(ROOT)], prefix="geowh."):
        if info.name.split(".")[1] in NOT_LIBRARY or info.name == "geowh.__main__":
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError as e:  # an optional extra (lightning, ray) not installed here
            if "lightning" in str(e) or "ray" in str(e):
                continue
            raise
    return modules


def _callables(module: types.ModuleType):
    """(qualified name, function) of every function and method defined in `module`."""
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value):
            yield name, value
        elif inspect.isclass(value):
            for attr, member in vars(value).items():
                if inspect.isfunction(member):
                    yield f"{name}.{attr}", member


def test_every_progress_parameter_of_the_library_is_the_protocol_and_no_other_shape_is_left():
    found, wrong = 0, []
    for module in _library_modules():
        for qualname, fn in _callables(module):
            try:
                parameters = inspect.signature(fn).parameters.values()
            except (TypeError, ValueError):
                continue
            for p in parameters:
                where = f"{module.__name__}.{qualname}({p.name})"
                annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
                if p.name == "progress":
                    found += 1
                    if annotation != "Progress":
                        wrong.append(f"{where}: annotated {annotation!r}, not Progress")
                    if p.default is not inspect.Parameter.empty and p.default is not geowh.progress.silent:
                        wrong.append(f"{where}: defaults to {p.default!r}, not silent")
                elif OLD_SHAPES.match(p.name):
                    wrong.append(f"{where}: a progress shape of its own; take `progress: Progress = silent`")
                elif re.search(r"Callable\[\[.*\],\s*None\]", annotation) and (qualname, p.name) not in NOT_PROGRESS:
                    wrong.append(f"{where}: a callback ({annotation}); report through `progress`")
                elif re.search(r"\b\w*(Report|Events)\b", annotation):
                    wrong.append(f"{where}: a report object ({annotation}); report through `progress`")
    assert not wrong, "\n".join(wrong)
    assert found >= 15, f"only {found} progress parameters found: the scan missed the library"


def test_every_module_of_a_package_is_reachable_as_that_package_s_attribute():
    """`geowh.queries.phases` is the module, not a function re-exported under its name."""
    shadowed, checked = [], 0
    for module in _library_modules():
        if not hasattr(module, "__path__"):
            continue
        for info in pkgutil.iter_modules(module.__path__):
            child = f"{module.__name__}.{info.name}"
            try:
                importlib.import_module(child)
            except ImportError:
                continue
            checked += 1
            if not isinstance(getattr(module, info.name), types.ModuleType):
                shadowed.append(f"{child} is {getattr(module, info.name)!r}")
    assert not shadowed, "\n".join(shadowed)
    assert checked >= 40


def test_the_renderer_handles_every_kind_the_protocol_names():
    from geowh.cli.progress import HANDLERS

    assert set(HANDLERS) == set(KINDS)


def _drawn(events: list[Event], **how) -> str:
    from rich.console import Console

    from geowh.cli.progress import Renderer

    out = io.StringIO()
    with Renderer(console=Console(file=out, width=200, color_system=None), **how) as progress:
        for event in events:
            progress(event)
    return out.getvalue()


ENGINE = [
    Event("planned", total=2, data={"checkpoints": ["step1", "step2"]}),
    Event("started", "step1"),
    Event("bar", "tokens", done=10, total=20),
    Event("finished", "step1", data={"checkpoint": "step1", "step": 1, "status": "ok", "seconds": 1.5,
                                     "tokens_per_s": 13, "error": None}),
    Event("locked", "PID 7 (python3)", data={"db": "w.duckdb"}),
    Event("started", "step2"),
    Event("finished", "step2", data={"checkpoint": "step2", "step": 2, "status": "failed", "seconds": 0.1,
                                     "tokens_per_s": None, "error": "weights [corrupt]"}),
]


def test_the_renderer_draws_lines_and_quiet_keeps_only_the_wait_for_the_file():
    text = _drawn([Event("note", "layer 3 left out"), Event("info", "built index"), *ENGINE])
    assert "note: layer 3 left out" in text and "built index" in text
    assert "ok step1  1.5 s  13 tokens/s" in text
    assert "failed step2: weights [corrupt]" in text  # escaped: rich markup in an error is shown, not applied
    assert "waiting for w.duckdb: held by PID 7 (python3)" in text
    quiet = _drawn([Event("note", "layer 3 left out"), *ENGINE], quiet=True)
    assert "waiting for w.duckdb" in quiet and "note" not in quiet and "step1" not in quiet


def test_a_status_a_bar_and_the_steps_take_turns_on_the_one_live_display():
    """rich shows one live display at a time: each kind that needs another closes the one shown."""
    text = _drawn([
        Event("status", "reading the corpus"), Event("status", "tokenizing"),
        Event("bar", "steps", done=0, total=4), Event("bar", "steps", done=1, total=4, data={"loss": 2.5, "lr": 1e-3}),
        Event("bar", "steps", done=1, total=4, data={"rankme": 7.25, "alpha_req": 0.5}),
        Event("info", "trained"), Event("stage", "2/5 index"),
        Event("bar", "index: tokenize", done=5, total=10), Event("bar", "index: suffix array", done=1, total=1),
        Event("kind-of-a-newer-geowh", "said anyway"),
    ])
    assert "trained" in text and "2/5 index" in text and "said anyway" in text


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    save_series(root / "run", steps=(0, 1))
    write_docs(root / "docs.txt")
    return root


def test_an_ingest_tells_each_checkpoint_in_order_and_a_rerun_tells_nothing_to_do(run_folder, tmp_path):
    from geowh.ingest import IngestConfig, ingest

    events: list[Event] = []
    config = IngestConfig(probe=str(run_folder / "docs.txt"), n=20, max_len=16)
    summary = ingest(run_folder / "run", config, db=tmp_path / "w.duckdb", progress=events.append)
    assert summary.count("ok") == 2
    assert all(e.kind in KINDS for e in events)
    assert events[0] == Event("planned", total=2, data={"checkpoints": ["step0", "step1"]})
    steps = [(e.kind, e.text) for e in events if e.kind != "bar"]
    assert steps[1:] == [("started", "step0"), ("finished", "step0"), ("started", "step1"), ("finished", "step1")]
    assert [e.data["status"] for e in events if e.kind == "finished"] == ["ok", "ok"]
    tokens = [(e.done, e.total) for e in events if e.kind == "bar" and e.text == "tokens"]
    assert tokens and tokens[-1][0] == tokens[-1][1] and all(d <= t for d, t in tokens)

    again: list[Event] = []
    ingest(run_folder / "run", config, db=tmp_path / "w.duckdb", progress=again.append)
    assert [e.kind for e in again] == ["planned"] and again[0].total == 0
