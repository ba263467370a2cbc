"""Outputs never destroy inputs and are never half-written; every failure is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from test_warehouse import checkpoint_rows

from geowh.errors import WarehouseError
from geowh.outputs import output_path
from geowh.warehouse import Warehouse


def one_line_error(result, *words):
    """The command failed with exit 1 and one `error:` line naming `words`, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escaped exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture
def db(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.write(checkpoint_rows())
    return wh.path


@pytest.fixture
def full_fs(tmp_path):
    """A 64 KiB tmpfs (needs root, as CI has); skipped cleanly where mounting is not allowed."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_out_is_never_the_warehouse_and_an_existing_file_needs_force(cli, db, tmp_path):
    before = db.read_bytes()
    one_line_error(cli(["sql", "select 1 as a", "--db", db, "--out", db, "--force"]), "is the warehouse")
    assert db.read_bytes() == before
    kept = tmp_path / "kept.csv"
    kept.write_text("precious\n")
    one_line_error(cli(["sql", "select 1 as a", "--db", db, "--out", kept]), "already exists", "--force")
    assert kept.read_text() == "precious\n"
    assert cli(["sql", "select 1 as a", "--db", db, "--out", kept, "--force"]).exit_code == 0
    assert kept.read_text() == "a\n1\n"


def test_bad_out_paths_are_one_line(cli, db, tmp_path):
    sql = ["sql", "select 1 as a", "--db", db, "--out"]
    one_line_error(cli([*sql, tmp_path / "missing" / "x.csv"]), "not an existing folder")
    one_line_error(cli([*sql, tmp_path]), "is a folder")
    one_line_error(cli([*sql, "/dev/full"]), "not a regular file")
    one_line_error(cli([*sql, "/dev/full", "--force"]), "not a regular file")
    plot = ["plot", "--model", "m", "--db", db, "--out"]
    one_line_error(cli([*plot, tmp_path / "p.txt"]), ".png", ".pdf")
    one_line_error(cli([*plot, "/dev/full"]), "without an extension")
    one_line_error(cli([*plot, tmp_path / "missing" / "p.png"]), "not an existing folder")
    (tmp_path / "file").write_text("x")
    one_line_error(cli(["export", tmp_path / "file", "--db", db]), "not a folder")
    corpus = tmp_path / "c.txt"
    corpus.write_text("one document\n")
    one_line_error(cli(["index", "build", corpus, "--tokenizer", "unused", "--out", tmp_path / "file", "--db", db]),
                   "not a folder")
    assert (tmp_path / "file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "file", "w.duckdb"]  # no temporary left


def test_export_keeps_existing_files_unless_forced(cli, db, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "models.parquet").write_text("mine")
    one_line_error(cli(["export", out, "--db", db]), "models.parquet", "--force")
    assert (out / "models.parquet").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["models.parquet"]
    assert cli(["export", out, "--db", db, "--force"]).exit_code == 0
    assert pl.read_parquet(out / "models.parquet")["model"].to_list() == ["m"]


def test_an_interrupted_write_leaves_neither_a_partial_file_nor_a_temporary(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with output_path(target, force=True) as tmp:
            tmp.write_text("half a")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]
    with output_path(target, force=True) as tmp:
        tmp.write_text("new\n")
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's private 0600


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file_for_sql_out(cli, full_fs, tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOWH_DB", raising=False)
    result = cli(["sql", "select range as i, md5(range::varchar) as s from range(50000)", "--out", full_fs / f"big{suffix}"])
    one_line_error(result, "cannot write", "No space left")
    assert list(full_fs.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_no_partial_file_for_export(cli, full_fs, tmp_path):
    wh = Warehouse(tmp_path / "big.duckdb")
    rng = np.random.default_rng(0)
    rows = checkpoint_rows()
    rows["metrics"] = pl.DataFrame({"model": "m", "checkpoint": "step1", "probe": "p", "layer": np.arange(20000),
                                    "pooling": "last", "metric": "rankme", "value": rng.random(20000), "run_id": "m-step1"})
    wh.write(rows)
    result = cli(["export", full_fs / "parquet", "--db", wh.path])
    one_line_error(result, "No space left")
    assert list(full_fs.iterdir()) == []


def test_nested_columns_are_json_encoded_in_csv(cli, db, tmp_path):
    query = "select [1, 2] as l, {'a': 1, 'b': 'x'} as s, 1.5 as f"
    printed = cli(["sql", query, "--db", db, "-f", "csv"])
    assert printed.exit_code == 0, printed.output
    out = tmp_path / "n.csv"
    assert cli(["sql", query, "--db", db, "--out", out]).exit_code == 0
    for text in (printed.output, out.read_text()):
        row = pl.read_csv(text.encode()).row(0, named=True)
        assert json.loads(row["l"]) == [1, 2] and json.loads(row["s"]) == {"a": 1, "b": "x"} and row["f"] == 1.5


def test_a_truncated_warehouse_is_one_line_for_info_and_export(cli, tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    for i in range(30):
        wh.write(checkpoint_rows(checkpoint=f"step{i}", step=i))
    size = wh.path.stat().st_size
    for keep in (4096, size // 10, size // 2):
        cut = tmp_path / f"cut{keep}.duckdb"
        cut.write_bytes(wh.path.read_bytes()[:keep])
        one_line_error(cli(["info", "--db", cut]), str(cut))
        one_line_error(cli(["export", tmp_path / f"out{keep}", "--db", cut]), str(cut))
        assert not (tmp_path / f"out{keep}").exists()


def test_a_warehouse_that_cannot_be_opened_is_a_warehouse_error_for_writers_too(tmp_path):
    cut = tmp_path / "cut.duckdb"
    wh = Warehouse(tmp_path / "w.duckdb")
    wh.write(checkpoint_rows())
    cut.write_bytes(wh.path.read_bytes()[:4096])
    with pytest.raises(WarehouseError, match="damaged|not a readable"):
        Warehouse(cut).completed("geometry", "m", "key")
    with pytest.raises(WarehouseError, match="damaged|not a readable"):
        Warehouse(cut).write(checkpoint_rows(checkpoint="new"))


def test_sql_out_in_a_fresh_process_refuses_the_warehouse_in_one_line(db, tmp_path):
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-c", "from geowh.cli import main; main()", "sql", "select 1",
                           "--db", str(db), "--out", str(db), "--force"], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and done.stderr.startswith("error:") and done.stderr.count("\n") == 1, done.stderr


def test_a_full_disk_anywhere_else_is_one_line_not_a_traceback(cli, db, monkeypatch):
    import errno

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/file")

    monkeypatch.setattr(Warehouse, "info", full)
    one_line_error(cli(["info", "--db", db]), "No space left on device", "/somewhere/file")
    monkeypatch.setattr(Warehouse, "info", lambda self: 1 / 0)
    assert isinstance(cli(["info", "--db", db]).exception, ZeroDivisionError)  # a bug keeps its traceback


def test_a_temporary_left_by_a_killed_process_is_removed_by_the_next_write_and_a_live_ones_is_kept(tmp_path):
    # issue 18: kill -9 during `index build` left an 11 MB partial folder that reruns never removed
    import signal

    code = ("import os, signal, sys\nfrom geowh.outputs import output_path\n"
            "with output_path(sys.argv[1], folder=True) as tmp:\n"
            "    (tmp / 'table.0').write_bytes(b'x' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    out = tmp_path / "index"
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    orphans = list(tmp_path.glob(".index.*.partial"))
    assert len(orphans) == 1 and (orphans[0] / "table.0").exists()
    running = tmp_path / orphans[0].name.replace(orphans[0].name.split(".")[2].split("@")[0], str(os.getpid()), 1)
    running.mkdir()  # a concurrent build of this very process: still being written
    with output_path(out, folder=True) as tmp:
        (tmp / "table.0").write_bytes(b"whole")
    assert not orphans[0].exists() and running.exists()
    assert (out / "table.0").read_bytes() == b"whole"


@pytest.mark.parametrize("name", ["", "  "])
def test_export_to_an_empty_folder_name_is_refused_not_written_into_the_current_folder(cli, db, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    one_line_error(cli(["export", name, "--db", db]), "empty")
    with pytest.raises(Exception, match="empty"):
        Warehouse(db).export(name)
    assert sorted(tmp_path.iterdir()) == before
