"""`geowh sql` can always be stopped, never holds the file past its query, and draws at the speed of the data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_warehouse import checkpoint_rows

from geowh.errors import WarehouseError
from geowh.warehouse import Warehouse

ENDLESS = "select count(*) from range(1000000000000)"  # hours of work for DuckDB


def geowh(*args: str) -> subprocess.Popen:
    """`geowh ARGS` in a fresh process, as a user runs it."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    return subprocess.Popen([sys.executable, "-c", "from geowh.cli import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def held_by_query(db, within: float = 30) -> None:
    """Return once another process holds `db` (the query runs), polling as an ingest would."""
    import duckdb

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            duckdb.connect(str(db)).close()
        except duckdb.IOException:
            return
        time.sleep(0.1)
    pytest.fail("the query never opened the warehouse")


@pytest.fixture
def db(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.write(checkpoint_rows())
    return wh.path


def test_a_query_past_its_timeout_is_interrupted_in_the_library(db):
    started = time.monotonic()
    with pytest.raises(WarehouseError, match="longer than its limit of 0.5 s"):
        Warehouse(db).sql(ENDLESS, timeout=0.5)
    assert time.monotonic() - started < 5
    assert Warehouse(db).sql("select count(*) as n from metrics")["n"].to_list() == [2]  # the file is free again


def test_a_keyboard_interrupt_stops_a_running_query_in_the_library(db):
    # A KeyboardInterrupt in the main thread, as Ctrl-C in a notebook raises it. Python's own
    # SIGINT handler is put in place first: an earlier test of the session (a local Ray cluster,
    # a CLI run in-process) may have left another one, and a notebook has Python's.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            Warehouse(db).sql(ENDLESS)
        assert time.monotonic() - started < 5
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_a_running_query_with_130_and_143(db, signum):
    proc = geowh("sql", "--db", str(db), ENDLESS, "--timeout", "0")
    held_by_query(db)  # the query is running: waited for, not guessed with a sleep
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{signal.Signals(signum).name} did not stop the query")
    assert proc.returncode == 128 + signum, err
    # The file is held from the connection's start: the signal lands in the query ("interrupted;
    # nothing was written") or, a moment earlier, in the command around it (the generic line).
    assert "Traceback" not in err, err
    assert "interrupted; nothing was written" in err or "left nothing half-written" in err, err


@pytest.mark.slow
def test_a_waiting_writer_proceeds_as_soon_as_a_timed_out_query_lets_go(db):
    proc = geowh("sql", "--db", str(db), ENDLESS, "--timeout", "3")
    waits = []
    held_by_query(db)
    started = time.monotonic()
    # an ingest waits as long as it takes for the file; here it must not wait past the query's limit
    Warehouse(db, lock_timeout=None, progress=waits.append).write(checkpoint_rows(checkpoint="step2", step=2))
    waited = time.monotonic() - started
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "longer than its limit of 3 s" in err, err
    assert waits, "the writer never found the file held: the test proves nothing"
    assert waited < 12, f"the writer waited {waited:.1f} s"
    assert Warehouse(db).sql("select count(*) as n from checkpoints")["n"].to_list() == [2]


def test_a_large_result_draws_a_screenful_and_says_how_many_rows_were_left_out(cli, db):
    started = time.monotonic()
    result = cli(["sql", "--db", db, "select range as i, 'x' as j from range(300000)"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "first 20 of 300,000 rows shown (299,980 left out)" in result.output
    assert "--format csv" in result.output and "--out FILE" in result.output
    assert "│ 19 │ x │" in result.output and "│ 20 │ x │" not in result.output  # rows 0..19 only
    assert elapsed < 10, f"{elapsed:.1f} s for a screenful"  # every row drawn took ~30 s
    every = cli(["sql", "--db", db, "select range as i from range(300000)", "--format", "csv"])
    assert len(every.output.splitlines()) == 300001


def test_a_small_result_is_drawn_whole_without_a_note(cli, db):
    result = cli(["sql", "--db", db, "select range as i from range(20)"])
    assert result.exit_code == 0 and "│ 19 │" in result.output and "left out" not in result.output


@pytest.mark.parametrize("timeout", ["-1", "nan", "inf"])
def test_a_bad_timeout_is_one_line(cli, db, timeout):
    result = cli(["sql", "--db", db, "select 1", "--timeout", timeout])
    assert result.exit_code == 1 and "--timeout" in result.output and "Traceback" not in result.output


def test_an_out_suffix_geowh_cannot_write_is_refused_before_the_query(cli, db, tmp_path):
    result = cli(["sql", "--db", db, "select 1", "--out", tmp_path / "x.xlsx"])
    assert result.exit_code == 1 and "not .xlsx" in result.output
    assert not (tmp_path / "x.xlsx").exists()


def test_the_warehouses_write_ahead_log_is_never_an_output(cli, db):
    wal = db.parent / f"{db.name}.wal"
    wal.write_bytes(b"last commits")  # as DuckDB leaves it between checkpoints
    result = cli(["sql", "--db", db, "select 1", "--out", wal, "--force"])
    assert result.exit_code == 1 and "write-ahead log" in result.output
    assert wal.read_bytes() == b"last commits"


def test_a_format_that_contradicts_the_out_suffix_is_refused(cli, db, tmp_path):
    result = cli(["sql", "--db", db, "select 1 as a", "--format", "json", "--out", tmp_path / "x.csv"])
    assert result.exit_code == 1 and "disagree" in result.output and not (tmp_path / "x.csv").exists()
    assert cli(["sql", "--db", db, "select 1 as a", "--format", "csv", "--out", tmp_path / "x.csv"]).exit_code == 0
    assert (tmp_path / "x.csv").read_text() == "a\n1\n"
