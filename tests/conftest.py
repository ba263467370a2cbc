"""Fixtures shared by every test file: a fresh warehouse, the CLI runner, the shared data."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PYTHIA_TOKENIZER = SHARED / "data" / "tokenizers" / "gpt-neox-20b"
PYTHIA_EVALS = SHARED / "data" / "pythia-evals"

# `--dtype auto` picks bf16 on a CPU with native bf16 units; the suite's reference numbers are
# fp32, so it pins auto to fp32 (subprocesses inherit it); tests of the bf16 path ask for it.
os.environ.setdefault("GEOWH_CPU_BF16", "0")

# One torch/OpenMP thread per test process, set before anything imports torch (subprocesses
# inherit it). The suite's models are tiny: a second thread buys nothing there, and on a shared
# or busy machine OpenMP's spinning threads wait on each other and make a step many times
# slower (3.7 s against 0.39 s for a train-mini step, repro/demo.py's cpu_threads). `make test`
# runs one pytest-xdist worker per core instead (docs/testing.md).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


@pytest.fixture
def wh(tmp_path):
    """An empty warehouse file in tmp_path."""
    from geowh.warehouse import Warehouse

    return Warehouse(tmp_path / "w.duckdb")


@pytest.fixture
def cli(monkeypatch):
    """Invoke `geowh …` in-process with a pinned console width: cli(["sql", "select 42"])."""
    from geowh.cli import app

    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("NO_COLOR", "1")
    runner = CliRunner()

    def invoke(args: list[str], **kwargs):
        return runner.invoke(app, [str(a) for a in args], **kwargs)

    return invoke


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under `pytest -n N --dist loadgroup` (make test), keep each file whose tests share a
    module- or session-scoped fixture (a trained run, an index, a tiny series) on one worker, so
    that the fixture is built once, not once per worker; the other tests spread one by one.
    Without xdist the marker changes nothing."""
    here = Path(__file__).parent
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = [d[-1] for d in info.name2fixturedefs.values() if d] if info else []
        # ours only: pytest's own session fixtures (tmp_path_factory) are under every tmp_path
        if any(d.scope in ("module", "session") and Path(inspect.getfile(d.func)).parent == here for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
