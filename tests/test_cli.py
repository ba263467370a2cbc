"""The CLI conventions: read-only sql, --json, clear errors, help everywhere, light imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer

from geowh import __version__
from geowh.warehouse import Warehouse

README = Path(__file__).resolve().parents[1] / "README.md"


def all_commands() -> dict:
    """Every leaf command as its full name ("sql", "index build", …)."""
    from geowh.cli import app

    found = {}

    def walk(group, prefix: str) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):  # a sub-app (typer ships its own copy of click)
                walk(command, f"{prefix}{name} ")
            else:
                found[f"{prefix}{name}"] = command

    walk(typer.main.get_command(app), "")
    return found


def test_sql_prints_42_without_a_warehouse_but_a_missing_db_is_an_error(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOWH_DB", raising=False)
    result = cli(["sql", "select 42 as answer"])
    assert result.exit_code == 0, result.output
    assert "42" in result.output
    missing = cli(["sql", "select 42 as answer", "--db", tmp_path / "w.duckdb"])
    assert missing.exit_code == 1 and "no warehouse at" in missing.output
    assert list(tmp_path.iterdir()) == []


def test_sql_refuses_a_create_table_with_a_clear_message(cli, tmp_path):
    result = cli(["sql", "CREATE TABLE x (a INT)", "--db", tmp_path / "w.duckdb"])
    assert result.exit_code == 1
    assert "only reads" in result.output and "Traceback" not in result.output


def test_sql_formats_and_writes_parquet(cli, tmp_path):
    db = tmp_path / "w.duckdb"
    Warehouse(db).write({"models": [{"model": "m", "layers": 3}]})
    as_json = cli(["sql", "select model, layers from models", "--db", db, "--format", "json"])
    assert json.loads(as_json.output) == [{"model": "m", "layers": 3}]
    as_csv = cli(["sql", "select model, layers from models", "--db", db, "-f", "csv"])
    assert as_csv.output.splitlines() == ["model,layers", "m,3"]
    out = tmp_path / "x.parquet"
    assert cli(["sql", "select * from models", "--db", db, "--out", out]).exit_code == 0
    import polars as pl

    assert pl.read_parquet(out)["model"].to_list() == ["m"]


def test_the_db_option_falls_back_to_the_geowh_db_variable(cli, tmp_path, monkeypatch):
    db = tmp_path / "env.duckdb"
    Warehouse(db).write({"models": [{"model": "from-env"}]})
    monkeypatch.setenv("GEOWH_DB", str(db))
    result = cli(["sql", "select model from models", "-f", "csv"])
    assert "from-env" in result.output


def test_info_json_describes_the_warehouse(cli, tmp_path):
    db = tmp_path / "w.duckdb"
    Warehouse(db).write({"models": [{"model": "m"}], "checkpoints": [{"model": "m", "checkpoint": "step1", "step": 1}]})
    summary = json.loads(cli(["info", "--db", db, "--json"]).output)
    assert summary["tables"]["checkpoints"] == 1
    assert summary["models"][0]["model"] == "m"


def test_info_on_a_missing_warehouse_says_what_to_do(cli, tmp_path):
    result = cli(["info", "--db", tmp_path / "missing.duckdb"])
    assert result.exit_code == 1
    assert "no warehouse at" in result.output and "--db" in result.output


def test_export_writes_parquet_files(cli, tmp_path):
    db = tmp_path / "w.duckdb"
    Warehouse(db).write({"models": [{"model": "m"}]})
    result = cli(["export", tmp_path / "out", "--db", db, "--json"])
    assert result.exit_code == 0
    assert (tmp_path / "out" / "models.parquet").exists()
    assert str(tmp_path / "out" / "trajectories.parquet") in json.loads(result.output)


def test_metrics_json_matches_the_library(cli, tmp_path):
    from geowh.ingest.features.spectrum import metrics_of_file

    rng = np.random.default_rng(0)
    features = rng.standard_normal((400, 150)) * np.arange(1, 151) ** -0.6
    path = tmp_path / "f.npy"
    np.save(path, features)
    result = cli(["metrics", path, "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)["metrics"]
    assert printed == pytest.approx(metrics_of_file(path), rel=1e-12)
    assert {"rankme", "alpha_req", "alpha_req_r2", "participation_ratio"} <= set(printed)


def test_metrics_on_a_missing_file_is_one_line_not_a_traceback(cli, tmp_path):
    result = cli(["metrics", tmp_path / "nope.npy"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "nope.npy" in result.output


def test_version_prints_the_package_version(cli):
    result = cli(["--version"])
    assert result.output.strip() == f"geowh {__version__}"


def test_every_command_has_help_with_an_example():
    for name, command in all_commands().items():
        assert command.help, f"geowh {name} has no help"
        assert "Example:" in command.help, f"geowh {name} --help shows no example"


def test_every_command_is_mentioned_in_the_readme():
    readme = README.read_text()
    for name in all_commands():
        assert re.search(rf"geowh {re.escape(name)}\b", readme), f"README.md does not mention `geowh {name}`"


def test_commands_that_report_offer_json():
    # Everything except commands that only write files or show a picture reports something.
    for name, command in all_commands().items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        if name in {"sql"}:
            assert "--format" in options
            continue
        assert "--json" in options or name in {"plot", "demo"}, f"geowh {name} has no --json"


@pytest.mark.parametrize("module", ["geowh.warehouse", "geowh.queries", "geowh.cli", "geowh.spectrum_math"])
def test_light_modules_never_import_the_gpu_stack(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'infini_gram') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_only_cli_imports_the_reproduction_code():
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"^\s*(from geowh\.repro|from geowh import repro|import geowh\.repro)", re.MULTILINE)
    for folder in ("warehouse", "queries", "ingest", "integrations"):
        for path in (root / folder).rglob("*.py"):
            assert not pattern.search(path.read_text()), f"{path} imports geowh.repro, the top layer"


def test_queries_and_warehouse_sources_do_not_mention_the_gpu_stack():
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"^\s*(import|from)\s+(torch|transformers|infini_gram)\b", re.MULTILINE)
    light = [root / "spectrum_math.py", *(root / "warehouse").rglob("*.py"), *(root / "queries").rglob("*.py")]
    for path in light:
        assert not pattern.search(path.read_text()), f"{path} imports the GPU stack"


@pytest.mark.parametrize("value, shown", [
    (2097152, "2.1M"), (2.09715e6, "2.1M"), (143000, "143000"), (143000.0, "143k"), (2.99893e11, "300B"),
    (54300.0, "54.3k"), (-0.0977291, "-0.09773"), (5000.0, "5000"), (999_600.0, "1M"), (9999.7, "10k"),
    (2.5e15, "2500T"), (float("nan"), "nan"),
])
def test_numbers_are_printed_as_people_read_them(value, shown):
    from geowh.cli.common import number

    assert number(value) == shown


def test_a_narrow_table_leaves_out_optional_columns_and_says_which(cli, tmp_path, monkeypatch):
    import polars as pl

    from geowh.cli.common import fit_table

    frame = pl.DataFrame({"model": ["pythia-1.4b-deduped"], "note": ["x" * 30], "detail": ["y" * 30], "n": [3]})
    table, hidden = fit_table(frame, None, 80, optional=["detail", "n"])
    assert hidden == ["detail"] and [c.header for c in table.columns] == ["model", "note", "n"]
    assert fit_table(frame, None, 200, optional=["detail"])[1] == []
    monkeypatch.setenv("COLUMNS", "80")
    Warehouse(tmp_path / "w.duckdb").write({"models": [{"model": "pythia-1.4b-deduped", "family": "pythia"}]})
    shown = cli(["info", "--db", tmp_path / "w.duckdb"])
    assert shown.exit_code == 0 and "│ pythia-1.4b-deduped │" in shown.stdout and "…" not in shown.stdout


def test_rows_too_wide_for_any_table_are_shown_one_column_per_line(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    names = [f"column_number_{i}" for i in range(8)]
    select = ", ".join(f"'pythia-1.4b-deduped-{i}' AS {name}" for i, name in enumerate(names))
    shown = cli(["sql", f"SELECT {select} UNION ALL SELECT {select}"])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in shown.stdout
    assert [line.split()[:2] for line in lines if line.startswith("column_number_3")] == [
        ["column_number_3", "pythia-1.4b-deduped-3"]] * 2
    assert sum(line.startswith("row ") for line in lines) == 2


@pytest.mark.parametrize("name, config, expected", [
    ("train-mini", "geowh.repro.train:TrainConfig",
     {"layers", "d_model", "vocab", "tokenizer", "batch_size", "seq_len", "lr", "warmup", "min_lr_ratio",
      "weight_decay", "checkpoints", "seed"}),
    ("demo", "geowh.repro.demo:DemoConfig", {"steps", "minutes", "n", "qa_items", "device", "threads"}),
])  # toy: tests/test_toy.py
def test_command_defaults_are_the_config_defaults(name, config, expected):
    import dataclasses
    import importlib

    module, cls = config.split(":")
    defaults = {f.name: f.default for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    options = {p.name: p.default for p in all_commands()[name].params}
    shared = set(options) & set(defaults)
    assert shared >= expected, f"geowh {name} lacks options for {expected - shared}"
    assert {k: options[k] for k in expected} == {k: defaults[k] for k in expected}


@pytest.mark.parametrize("value", ["last[/]", "mean[bold]"])
def test_an_error_that_quotes_brackets_is_printed_whole(cli, tmp_path, value):
    """Error text is not rich markup: a user's `[/]` once crashed the error printer with a traceback."""
    result = cli(["ingest", tmp_path, "--pooling", value, "--db", tmp_path / "w.duckdb"])
    assert result.exit_code == 1
    assert f"--pooling {value}: use last or mean" in result.output and "Traceback" not in result.output
