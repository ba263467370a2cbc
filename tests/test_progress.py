"""One progress protocol: the library tells `progress(Event)`, the CLI's one renderer draws it, and
no second shape (an `on_x` callback, `note=`, an `Events` or `Report` object) creeps back in."""

from __future__ import annotations

import ast
import importlib
import io
import pkgutil
import re
import textwrap
import types
from pathlib import Path

import pytest
from tiny import save_series, write_docs

import geowh
from geowh.progress import KINDS, Event

ROOT = Path(geowh.__file__).parent
NOT_LIBRARY = {"cli", "tests", "bench", "build", "docs", "data", "runs"}
"""Folders of the checkout that are not the library (cli/ renders progress; the rest is not shipped code)."""

OLD_SHAPES = re.compile(r"^(on_\w+|note|notes|events|report|say|tell|log)$")
"""Parameter names of the shapes the protocol replaced (on_batch, on_event, on_wait, note, events, report, …)."""

NOT_PROGRESS = {
    ("Executor.map", "started"): "the driver writes the job's running row when an executor starts it",
    ("Serial.map", "started"): "the same hook",
    ("RayExecutor.map", "started"): "the same hook",
}
"""Callable parameters returning None that are not progress, each with why."""


def _library_files() -> list[Path]:
    """The package's source files: those at the root and in its library folders (not .venv, tests, …)."""
    packages = [p for p in ROOT.iterdir() if p.name not in NOT_LIBRARY and (p / "__init__.py").is_file()]
    return sorted([*ROOT.glob("*.py"), *(f for package in packages for f in package.rglob("*.py"))])


def _functions(tree: ast.AST):
    """(qualified name, def) of every function and method of a module's syntax tree."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)
    yield from walk(tree, "")


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef):
    """(name, annotation text, default text or None) of each parameter."""
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for arg, default in [*zip(positional, defaults), *zip(a.kwonlyargs, a.kw_defaults)]:
        yield (arg.arg, ast.unparse(arg.annotation) if arg.annotation else "",
               ast.unparse(default) if default is not None else None)


def test_every_progress_parameter_of_the_library_is_the_protocol_and_no_other_shape_is_left():
    """Read from the source (no import: seconds, and the optional extras need not be installed)."""
    found, wrong = 0, []
    for path in _library_files():
        for qualname, fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            for name, annotation, default in _parameters(fn):
                where = f"{path.relative_to(ROOT)}: {qualname}({name})"
                if name == "progress":
                    found += 1
                    if annotation != "Progress":
                        wrong.append(f"{where}: annotated {annotation!r}, not Progress")
                    if default not in (None, "silent"):
                        wrong.append(f"{where}: defaults to {default}, not silent")
                elif OLD_SHAPES.match(name):
                    wrong.append(f"{where}: a progress shape of its own; take `progress: Progress = silent`")
                elif re.search(r"Callable\[\[.*\],\s*None\]", annotation) and (qualname, name) not in NOT_PROGRESS:
                    wrong.append(f"{where}: a callback ({annotation}); report through `progress`")
                elif re.search(r"\b\w*(Report|Events)\b", annotation):
                    wrong.append(f"{where}: a report object ({annotation}); report through `progress`")
    assert not wrong, "\n".join(wrong)
    assert found >= 15, f"only {found} progress parameters found: the scan missed the library"


def test_every_module_of_queries_is_the_module_as_an_attribute_of_the_package():
    """`geowh.queries.phases` is the module, not the function `phases` re-exported under its name."""
    import geowh.queries

    names = [info.name for info in pkgutil.iter_modules(geowh.queries.__path__)]
    assert {"phases", "plot", "correlate", "report"} <= set(names)
    for name in names:
        importlib.import_module(f"geowh.queries.{name}")
        assert isinstance(getattr(geowh.queries, name), types.ModuleType), f"geowh.queries.{name} is not the module"


def test_no_package_binds_a_name_of_one_of_its_modules():
    """Every package of geowh, read from its __init__.py: a name it binds would hide the module."""
    shadowing = []
    for init in (p for p in _library_files() if p.name == "__init__.py"):
        modules = {p.stem for p in init.parent.glob("*.py") if p.stem != "__init__"}
        modules |= {p.parent.name for p in init.parent.glob("*/__init__.py")}
        tree = ast.parse(init.read_text(encoding="utf-8"))
        bound = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                bound |= {alias.asname or alias.name for alias in node.names if node.level == 0}
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.Assign):
                bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        # a re-export of the module itself (`from geowh.x import y` where y is the module) is the module
        modules_imported = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                            for alias in node.names if node.module == ".".join(("geowh", *init.parent.relative_to(ROOT).parts))}
        shadowing += [f"{init.relative_to(ROOT)} binds {name}" for name in (bound & modules) - modules_imported]
    assert not shadowing, "\n".join(shadowing)


def test_the_module_docstring_example_runs_and_says_what_it_shows(wh, tmp_path):
    import numpy as np
    import polars as pl

    from geowh.queries import import_metrics
    from geowh.queries.phases import phases

    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256])
    for layer in (3, 24):
        pl.DataFrame({"model": "m", "step": steps, "probe": "fineweb", "layer": layer,
                      "rankme": np.linspace(10, 40, len(steps)) + layer, "alpha_req": np.linspace(1.2, 0.6, len(steps))}
                     ).write_csv(tmp_path / f"layer{layer}.csv")
        import_metrics(wh, tmp_path / f"layer{layer}.csv")
    example = textwrap.dedent("\n".join(line for line in geowh.progress.__doc__.splitlines() if line.startswith("    ")))
    scope = {"wh": wh, "phases": phases, "Event": Event}
    exec(example, scope)
    shown = re.search(r"# (\[.*\])$", example.splitlines()[-1]).group(1)
    assert scope["notes"] == ast.literal_eval(shown)


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


@pytest.mark.slow  # two tiny checkpoints ingested twice: ~10 s on an idle machine
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
