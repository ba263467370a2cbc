"""Reading commands never write: no migration, no tables in another program's file, no new file.

Also: every --json is strict JSON (null, never NaN), and `geowh metrics` says why a value is null.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import duckdb
import numpy as np
import pytest
from test_outputs import one_line_error
from test_phases import THREE_PHASES, trajectory, write_csv

from geowh.cli.common import to_json
from geowh.queries import import_metrics
from geowh.warehouse import Warehouse
from geowh.warehouse.schema import latest_version


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as jq and every other strict parser do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def reading_commands(out):
    return [
        ["sql", "select count(*) from metrics"],
        ["info"],
        ["export", out / "parquet"],
        ["phases", "--model", "toy", "--no-store"],
        ["correlate", "--model", "toy", "--x", "rankme", "--y", "alpha_req"],
        ["plot", "--model", "toy", "--out", out / "p.png"],
    ]


@pytest.fixture
def current(tmp_path):
    rankme, alpha = trajectory(THREE_PHASES, noise=0.02, seed=0)
    write_csv(tmp_path / "t.csv", "toy", rankme, alpha)
    wh = Warehouse(tmp_path / "w.duckdb")
    import_metrics(wh, tmp_path / "t.csv")
    return wh.path


@pytest.fixture
def old(current):
    """The same warehouse as an older geowh left it: only migration 1 recorded."""
    con = duckdb.connect(str(current))
    con.execute("DELETE FROM schema_migrations WHERE version > 1")
    con.close()
    return current


def test_reading_commands_refuse_an_older_warehouse_naming_geowh_migrate_and_change_nothing(cli, old, tmp_path):
    before = old.read_bytes()
    (tmp_path / "out").mkdir()
    for args in reading_commands(tmp_path / "out"):
        one_line_error(cli([*args, "--db", old]), "geowh migrate")
    assert old.read_bytes() == before and list((tmp_path / "out").iterdir()) == []
    migrated = cli(["migrate", "--db", old, "--json"])
    assert strict_json(migrated.stdout) == {"path": str(old), "from_version": 1, "to_version": latest_version()}
    after = old.read_bytes()
    for args in reading_commands(tmp_path / "out"):
        result = cli([*args, "--db", old])
        assert result.exit_code == 0, (args, result.output)
    assert old.read_bytes() == after  # --no-store, correlate, plot, sql, info and export only read


@pytest.mark.parametrize("writer", ["import-metrics", "phases", "ingest"])
def test_writing_commands_still_migrate_an_older_warehouse(cli, old, tmp_path, writer):
    if writer == "import-metrics":
        args = ["import-metrics", tmp_path / "t.csv"]
    elif writer == "phases":
        args = ["phases", "--model", "toy"]
    else:  # its first act, closing stale runs of the model, must not be a read that refuses the file
        from tiny import save_series, write_docs

        save_series(tmp_path / "run", steps=(0,), layers=1, d=32, heads=2)
        args = ["ingest", tmp_path / "run", "--probe", write_docs(tmp_path / "docs.txt", limit=20), "--n", "8",
                "--max-len", "16"]
    result = cli([*args, "--db", old])
    assert result.exit_code == 0, result.output
    assert Warehouse(old).schema_version() == latest_version()


def test_another_programs_duckdb_file_is_refused_by_readers_and_writers_alike(cli, tmp_path):
    theirs = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(theirs))
    con.execute("CREATE TABLE orders (id INT); INSERT INTO orders VALUES (1)")
    con.close()
    before = theirs.read_bytes()
    write_csv(tmp_path / "t.csv", "toy", *trajectory(THREE_PHASES, noise=0.02, seed=0))
    for args in [*reading_commands(tmp_path), ["import-metrics", tmp_path / "t.csv"], ["migrate"]]:
        one_line_error(cli([*args, "--db", theirs]), "not a geowh warehouse")
    assert theirs.read_bytes() == before


def test_a_db_that_does_not_exist_is_an_error_for_every_reading_command(cli, tmp_path):
    for args in reading_commands(tmp_path):
        one_line_error(cli([*args, "--db", tmp_path / "typo.duckdb"]), "no warehouse at")
    assert list(tmp_path.iterdir()) == []


def test_json_is_strict_everywhere_nan_and_infinity_become_null(cli, current, tmp_path):
    assert strict_json(to_json({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": {"d": math.nan}})) == {
        "a": None, "b": [None, None, 1.5], "c": {"d": None}}
    query = "select 'nan'::double as x, 'inf'::double as y, 2.5::double as z"
    printed = cli(["sql", query, "--db", current, "-f", "json"])
    assert strict_json(printed.stdout) == [{"x": None, "y": None, "z": 2.5}]
    assert cli(["sql", query, "--db", current, "--out", tmp_path / "x.json"]).exit_code == 0
    assert strict_json((tmp_path / "x.json").read_text()) == [{"x": None, "y": None, "z": 2.5}]
    for args in (["info", "--json"], ["phases", "--model", "toy", "--no-store", "--json"]):
        result = cli([*args, "--db", current])
        assert result.exit_code == 0, result.output
        strict_json(result.stdout)


def test_metrics_says_why_a_metric_is_null_in_json_and_in_the_table(tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, np.random.default_rng(0).standard_normal((10, 40)))
    geowh = [sys.executable, "-c", "from geowh.cli import main; main()", "metrics", str(path)]
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    done = subprocess.run([*geowh, "--json"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    printed = strict_json(done.stdout)
    assert printed["metrics"]["alpha_req"] is None and printed["metrics"]["rankme"] > 0
    assert "at least 14 eigenvalues above the numerical floor (9 here)" in printed["reasons"]["alpha_req"]
    assert "alpha_req_r2" in printed["reasons"] and "rankme" not in printed["reasons"]
    table = subprocess.run(geowh, capture_output=True, text=True, env=env)
    line = next(row for row in table.stdout.splitlines() if " alpha_req " in row)
    assert "null" in line and "at least 14 eigenvalues" in line
