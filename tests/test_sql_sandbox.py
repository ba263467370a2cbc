"""`geowh sql` only reads: DuckDB's sandbox, the exploits of issue 9, and what still works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_warehouse import checkpoint_rows

from geowh.errors import GeowhError
from geowh.warehouse import Warehouse


def snapshot(root):
    """Every file under root with its bytes: what a refused statement must leave as it was."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def setup(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.write(checkpoint_rows(checkpoint="step1", step=1))
    wh.write(checkpoint_rows(checkpoint="step2", step=2))
    other = Warehouse(tmp_path / "other.duckdb")
    other.write(checkpoint_rows(model="theirs"))
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "runs.csv").write_text("step,loss\n1,3.5\n2,2.5\n")
    # A folder pragma import_database would run: its schema.sql writes into the folder itself.
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "schema.sql").write_text(f"COPY (SELECT 1 AS a) TO '{evil / 'pwned.csv'}';\nCREATE TABLE pwned (a INT);\n")
    (evil / "load.sql").write_text("\n")
    return wh, other, folder, evil, tmp_path


def exploits(other, evil, tmp_path):
    return [
        f"explain analyze copy (select 'x' as a) to '{other.path}' (format csv)",
        f"EXPLAIN (ANALYZE) COPY (SELECT 'x' AS a) TO '{other.path}' (FORMAT csv)",
        f"/* hi */ explain analyze copy (select 1) to '{tmp_path / 'mine' / 'x.csv'}'",
        f"pragma import_database('{evil}')",
        f"call enable_logging(storage='file', storage_path='{tmp_path / 'logs'}')",
        f"attach '{other.path}' as o; delete from o.metrics",
        f"attach '{other.path}' as o",
        f"copy metrics to '{tmp_path / 'mine' / 'm.csv'}'",
        f"export database '{tmp_path / 'dump'}'",
        f"select * from read_csv('{evil / 'schema.sql'}')",
        "install httpfs",
        "load httpfs",
        "set enable_external_access = true",
        "delete from metrics",
    ]


def test_the_exploits_of_issue_9_are_refused_and_write_nothing(setup):
    wh, other, folder, evil, tmp_path = setup
    before = snapshot(tmp_path)
    nofile = Warehouse(tmp_path / "absent.duckdb")
    for statement in exploits(other, evil, tmp_path):
        for run in (lambda s: wh.sql(s, read=[folder]), lambda s: nofile.sql(s, read=[folder], missing_ok=True)):
            with pytest.raises(GeowhError):
                run(statement)
                pytest.fail(f"not refused: {statement}")
    assert snapshot(tmp_path) == before
    assert Warehouse(other.path).table("metrics").height == 2


def test_read_only_statements_work_pivot_and_the_users_own_files_included(setup):
    wh, _, folder, _, tmp_path = setup
    pivot = wh.sql("pivot (select checkpoint, metric, value from metrics) on metric using max(value) order by checkpoint")
    assert pivot["checkpoint"].to_list() == ["step1", "step2"] and pivot["rankme"].to_list() == [3.0, 3.0]
    assert wh.sql("explain analyze select count(*) from metrics").height == 1
    assert wh.sql("summarize metrics").height > 0
    assert wh.sql("pragma table_info('metrics')").height > 0
    joined = wh.sql(
        f"select c.step, r.loss from checkpoints c join read_csv('{folder / 'runs.csv'}') r using (step) order by step",
        read=[folder],
    )
    assert joined.to_dicts() == [{"step": 1, "loss": 3.5}, {"step": 2, "loss": 2.5}]
    with pytest.raises(GeowhError, match="disabled by configuration"):
        wh.sql(f"select * from read_csv('{folder / 'runs.csv'}')")  # not named with --read
    with pytest.raises(GeowhError, match="--read"):
        wh.sql("select 1", read=[tmp_path / "nowhere"])


def test_a_comment_only_statement_gets_a_clear_message(cli, setup):
    wh = setup[0]
    for text in ("-- just a comment", "/* nothing */", "  "):
        result = cli(["sql", text, "--db", wh.path])
        assert result.exit_code == 1, result.output
        assert "holds no statement" in result.output and "Traceback" not in result.output


def test_sql_in_a_fresh_process_refuses_the_exploits_and_reads_its_own_files(setup):
    wh, other, folder, evil, tmp_path = setup
    before = snapshot(tmp_path)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
    env.pop("GEOWH_DB", None)
    geowh = [sys.executable, "-c", "from geowh.cli import main; main()"]
    for statement in exploits(other, evil, tmp_path)[:6]:
        for db in (["--db", str(wh.path)], []):
            done = subprocess.run([*geowh, "sql", statement, *db], capture_output=True, text=True, env=env, cwd=tmp_path / "mine")
            assert done.returncode == 1, (statement, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert snapshot(tmp_path) == before
    done = subprocess.run([*geowh, "sql", "select c.step, r.loss from checkpoints c join 'runs.csv' r using (step) order by 1",
                           "--db", str(wh.path), "--read", str(folder), "-f", "json"],
                          capture_output=True, text=True, env=env, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"step": 1, "loss": 3.5}, {"step": 2, "loss": 2.5}]
