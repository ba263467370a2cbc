"""Fixtures shared by every test file: a fresh warehouse, the CLI runner, the shared data."""

from __future__ import annotations

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
