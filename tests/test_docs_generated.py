"""docs/cli.md and the metrics table of docs/metrics.md are generated from the code
(`python -m geowh.cli.docs`); these fail while either is stale."""

from __future__ import annotations

import pytest

from geowh.cli import docs

FIX = "run `python -m geowh.cli.docs` and commit docs/"


def test_the_command_reference_is_what_the_commands_say():
    expected = docs.cli_reference()
    assert docs.same((docs.DOCS / "cli.md").read_text(), expected), f"docs/cli.md is stale: {FIX}"
    import typer

    from geowh.cli import app

    for name in typer.main.get_command(app).commands:  # every command has its section
        assert f"\n## geowh {name}\n" in expected


def test_the_metrics_table_is_the_registry(monkeypatch):
    from dataclasses import replace

    from geowh.spectrum_math import REGISTRY

    text = (docs.DOCS / "metrics.md").read_text()
    assert docs.metrics_doc(text) == text, f"the table in docs/metrics.md is stale: {FIX}"
    for name in REGISTRY:
        assert f"| `{name}` |" in text
    # a changed default is a stale table
    monkeypatch.setitem(REGISTRY, "rankme", replace(REGISTRY["rankme"], defaults={"eps": 1e-6, "max_components": 2048}))
    assert docs.metrics_doc(text) != text


def test_the_check_names_a_stale_file_and_the_fix(monkeypatch, capsys):
    assert docs.main(["--check"]) == 0
    monkeypatch.setattr(docs, "cli_reference", lambda: "# Command reference\n\nnothing\n")
    assert docs.main(["--check"]) == 1
    assert "docs/cli.md" in capsys.readouterr().err


@pytest.mark.parametrize("a, b, equal", [
    ("│ --db  <path>  Warehouse │", "| --db <path> Warehouse |", False),
    ("╭─ Options ─╮\n│ --db │", "+- Options -+\n--db", False),
    ("╭─ Options ─╮\n│ --db   x │", "Options\n --db x", True),
])
def test_same_ignores_frames_and_spacing_not_words(a, b, equal):
    assert docs.same(a, b) is equal
