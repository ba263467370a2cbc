"""An ingest under faults: a reader holding the file, Ctrl-C and SIGTERM, kill -9, bad options,
no network, a full disk, a broken warehouse or checkpoint. Each must end in one clear line and
lose nothing already computed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import save_series, write_docs

# This environment's console script: `make test` runs the venv's python without putting the venv on PATH.
GEOWH = [str(Path(sys.executable).with_name("geowh"))]
ARGS = ["--probe", "docs.txt", "--n", "64", "--max-len", "32"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """./run (4 tiny GPT-NeoX checkpoints) and docs.txt."""
    root = tmp_path_factory.mktemp("faults")
    save_series(root / "run")
    write_docs(root / "docs.txt", limit=200)
    return root


def _env(**extra) -> dict:
    return os.environ | {"COLUMNS": "200", "NO_COLOR": "1"} | extra


def _start(workdir, *args, db="w.duckdb", **env) -> subprocess.Popen:
    return subprocess.Popen(
        [*GEOWH, "ingest", "./run", *ARGS, "--db", str(db), *args], cwd=workdir, env=_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 120) -> list[str]:
    """stderr lines up to the first that holds `text`."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} in stderr: {''.join(lines)}")


def _runs(db: Path) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT checkpoint, status, error FROM runs ORDER BY started_at").fetchall()
    finally:
        con.close()


# -- 4: a reader holding the file ---------------------------------------------------------------

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])  # a writable connection: the strongest lock there is
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow  # a fault-injection trial: a reader holds the file 4 s while the ingest waits
def test_a_computed_checkpoint_waits_for_a_reader_however_long_and_is_stored(workdir, tmp_path, monkeypatch):
    """A reader holds the file for longer than a reader's lock timeout (shortened to 1 s here):
    the ingest waits, says for whom, and stores every checkpoint."""
    import geowh.ingest.engine.run as run
    from geowh.warehouse import store

    monkeypatch.setattr(store, "LOCK_WAIT_SECONDS", 1.0)
    db = tmp_path / "w.duckdb"
    holders, waits = [], []
    compute = run.process_checkpoint

    def then_hold(ref, plan, **kwargs):
        result = compute(ref, plan, **kwargs)
        if ref.label == "step1":  # computed: now a reader takes the file for 4 s before it is written
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), "4"], stdout=subprocess.PIPE, text=True)
            assert holder.stdout.readline().strip() == "holding"
            holders.append(holder)
        return result

    monkeypatch.setattr(run, "process_checkpoint", then_hold)
    def progress(event):
        if event.kind == "locked":
            waits.append(event.text)

    summary = run.ingest(str(workdir / "run"), run.IngestConfig(probe=str(workdir / "docs.txt"), n=64, max_len=32),
                         db=db, progress=progress)
    holders[0].wait()
    assert [c["status"] for c in summary.checkpoints] == ["ok"] * 4
    assert waits and waits[0].startswith(f"PID {holders[0].pid} (")  # named from DuckDB's lock error
    assert sorted(_runs(db)) == sorted((f"step{s}", "ok", None) for s in (0, 1, 2, 4))


@pytest.mark.slow
def test_ctrl_c_while_waiting_for_the_file_stops_with_the_finished_checkpoints_written(workdir, tmp_path):
    db = tmp_path / "w.duckdb"
    proc = _start(workdir, db=db)
    _wait_for_line(proc, "ok step0")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        waiting = _wait_for_line(proc, "waiting")[-1]
        assert f"PID {holder.pid}" in waiting
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 130 and "Traceback" not in err, err
    runs = _runs(db)
    assert ("step0", "ok", None) in runs and all(r[1] in ("ok", "interrupted", "running") for r in runs)


def test_the_lock_holder_is_named_from_duckdbs_message():
    from geowh.warehouse.store import lock_holder

    message = ('IO Error: Could not set lock on file "/w.duckdb": Conflicting lock is held in '
               "/usr/bin/python3.11 (PID 4242). See also https://duckdb.org/docs/current/connect/concurrency")
    assert lock_holder(Exception(message)) == "PID 4242 (python3.11)"
    assert lock_holder(Exception("Could not set lock on file")) == "another process"


# -- 5: signals ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_ingest_stops_promptly_and_records_the_run_interrupted(workdir, tmp_path, sig, code):
    db = tmp_path / "w.duckdb"
    proc = _start(workdir, db=db)
    _wait_for_line(proc, "ok step0")
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert time.monotonic() - sent < 15
    assert "Traceback" not in err and f"stopped by {signal.Signals(sig).name}" in err
    runs = _runs(db)
    assert ("step0", "ok", None) in runs
    assert not [r for r in runs if r[1] == "running"]
    assert all(r[1] in ("ok", "interrupted") for r in runs)

    again = _start(workdir, "--json", db=db)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    statuses = {c["checkpoint"]: c["status"] for c in json.loads(out)["checkpoints"]}
    assert statuses["step0"] == "skipped" and set(statuses.values()) <= {"ok", "skipped"}


# The signal is sent as the named import begins (tests/trip.py), not after a sleep: the CLI's own
# start-up, then the command's imports of torch and transformers, on an idle or a loaded machine.
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["import:typer", "import:torch", "import:transformers"])
def test_ctrl_c_during_the_first_imports_stops_with_130_and_no_traceback(workdir, tmp_path, stage):
    from trip import trip_env

    proc = _start(workdir, db=tmp_path / "w.duckdb", **trip_env(tmp_path, stage))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Could not import" not in err


@pytest.mark.slow
def test_a_running_row_left_by_kill_9_is_shown_stale_and_cleaned_by_the_next_ingest(workdir, tmp_path):
    db = tmp_path / "w.duckdb"
    proc = _start(workdir, db=db)
    _wait_for_line(proc, "ok step0")
    time.sleep(0.3)  # into step1, whose running row is written first
    proc.kill()
    proc.wait()
    running = [r for r in _runs(db) if r[1] == "running"]
    if not running:
        pytest.skip("the kill landed between two checkpoints")  # rare; the fault suite counts both cases
    info = subprocess.run([*GEOWH, "info", "--db", str(db), "--json"], capture_output=True, text=True, env=_env())
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["running_runs"] == 0 and summary["interrupted_runs"] == len(running)

    again = _start(workdir, "--json", db=db)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    runs = _runs(db)
    assert not [r for r in runs if r[1] == "running"]
    assert [r for r in runs if r[1] == "interrupted" and r[2].startswith("stale")]


def test_staleness_asks_this_host_and_trusts_another_for_a_while():
    from datetime import datetime

    from geowh.warehouse.runs import STALE_AFTER, is_stale, this_process

    now = datetime.utcnow()
    me = this_process()
    assert not is_stale(me["host"], me["pid"], now, now)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert is_stale(me["host"], dead.pid, now, now)
    assert is_stale(me["host"], me["pid"], datetime(2000, 1, 1), now)  # the pid was reused by a later process
    assert not is_stale("elsewhere", 1, now - STALE_AFTER / 2, now)
    assert is_stale("elsewhere", 1, now - 2 * STALE_AFTER, now)
    assert is_stale(None, None, now, now)  # written before runs named their process


# -- 7: options --------------------------------------------------------------------------------------

BAD = [
    ["--n", "0"], ["--n", "-5"], ["--max-len", "0"], ["--min-len", "-1"], ["--layers", "first"], ["--layers", ","],
    ["--pooling", "max"], ["--pooling", ""], ["--subsets", "1"], ["--subsets", "-2"], ["--subsets", "100", "--n", "50"],
    ["--subsets", "32", "--n", "64"],
    ["--seed", "-1"], ["--batch-size", "0"], ["--checkpoints", ","], ["--checkpoints", " , "], ["--dtype", "fp8"],
]


@pytest.mark.parametrize("bad", BAD, ids=lambda a: " ".join(a))
def test_a_bad_option_is_one_line_before_anything_loads_or_is_written(cli, workdir, tmp_path, bad):
    db = tmp_path / "w.duckdb"
    args = ["ingest", workdir / "run", "--probe", workdir / "docs.txt", "--db", db, *bad]
    result = cli(args)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.count("error:") == 1 and bad[0] in result.output
    assert not db.exists()


def test_a_bad_option_answers_in_a_fresh_process_within_seconds(workdir, tmp_path):
    db = tmp_path / "w.duckdb"
    started = time.monotonic()
    result = subprocess.run([*GEOWH, "ingest", "./run", "--probe", "docs.txt", "--n", "0", "--db", str(db)],
                            cwd=workdir, capture_output=True, text=True, env=_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "error: --n 0: give a whole number of at least 1"
    ]
    assert time.monotonic() - started < 15 and not db.exists()


# -- 8: no network -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["ingest", "pythia-70m", "--checkpoints", "step1000", "--db", "w.duckdb"],
    ["checkpoints", "hf:EleutherAI/pythia-70m"],
], ids=["ingest", "checkpoints"])
def test_an_unreachable_hub_is_one_line_naming_the_fix_within_seconds(tmp_path, command):
    # A closed local port stands in for the hub, so the test means the same with or without a network.
    env = _env(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), GEOWH_HOME=str(tmp_path / "home"))
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    result = subprocess.run([*GEOWH, *command], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < 15
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "cannot reach the Hugging Face hub" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert "tokenizer" not in lines[0] and not (tmp_path / "w.duckdb").exists()


def test_transformers_load_reports_are_not_shown(workdir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(workdir / "run" / "step0", run / "step0")
    weights = load_file(run / "step0" / "model.safetensors")
    weights["embed_out.weight"] = torch.zeros(8, 8)  # a tensor the base model does not use: transformers reports it
    save_file(weights, run / "step0" / "model.safetensors", metadata={"format": "pt"})
    result = subprocess.run([*GEOWH, "ingest", str(run), *ARGS, "--db", str(tmp_path / "w.duckdb")],
                            cwd=workdir, capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stderr
    assert "UNEXPECTED" not in result.stderr and "can be ignored" not in result.stderr


# -- 9: clear lines ----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs, where the machine lets us mount one (root on Linux)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True
    ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow  # a fault-injection trial: a fresh process fills a 400 KiB tmpfs
@pytest.mark.parametrize("command", [["ingest", "./run", *ARGS], ["toy", "--steps", "500"]], ids=["ingest", "toy"])
def test_a_full_disk_is_one_line_and_exit_1(workdir, small_disk, command):
    db = small_disk / "w.duckdb"
    result = subprocess.run([*GEOWH, *command, "--db", str(db)], cwd=workdir, capture_output=True, text=True, env=_env())
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is full" in errors[0]


def test_a_truncated_warehouse_given_to_ingest_is_one_line(cli, workdir, tmp_path):
    db = tmp_path / "w.duckdb"
    first = cli(["ingest", workdir / "run", "--probe", workdir / "docs.txt", "--n", 64, "--max-len", 32,
                 "--checkpoints", "step0", "--db", db])
    assert first.exit_code == 0, first.output
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    result = cli(["ingest", workdir / "run", "--probe", workdir / "docs.txt", "--n", 64, "--max-len", 32, "--db", db])
    assert result.exit_code == 1 and result.output.count("error:") == 1, result.output
    assert f"{db} is truncated" in result.output and "Traceback" not in result.output


def test_an_empty_checkpoint_folder_says_it_holds_no_model_files(cli, workdir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(workdir / "run" / "step0", run / "step0")
    (run / "step1").mkdir()
    result = cli(["ingest", run, "--probe", workdir / "docs.txt", "--n", 64, "--max-len", 32,
                  "--db", tmp_path / "w.duckdb", "--json"])
    assert result.exit_code == 1
    failed = [c for c in json.loads(result.stdout)["checkpoints"] if c["status"] == "failed"]
    assert [c["checkpoint"] for c in failed] == ["step1"]
    assert "no model files" in failed[0]["error"] and "tokenizer" not in failed[0]["error"]


def test_nan_features_in_float32_are_blamed_on_the_checkpoint_not_on_fp16(cli, workdir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(workdir / "run" / "step0", run / "step0")
    weights = load_file(run / "step0" / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.1.mlp.dense_4h_to_h.weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, run / "step0" / "model.safetensors", metadata={"format": "pt"})
    result = cli(["ingest", run, "--probe", workdir / "docs.txt", "--n", 64, "--max-len", 32, "--dtype", "float32",
                  "--db", tmp_path / "w.duckdb", "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["checkpoints"][0]["error"]
    assert "NaN" in error and "float32" in error and "fp16" not in error and "float16 overflow" not in error
    assert "checkpoint itself" in error


# -- 6: thread pools in a fresh process ------------------------------------------------------------

from test_memorization import qa_file, qa_index  # noqa: E402,F401  (fixtures: a QA task and its index)


@pytest.mark.slow
def test_index_stats_and_memorize_run_in_a_fresh_process(qa_file, qa_index, workdir, tmp_path):  # noqa: F811
    """Each starts a thread pool whose workers used to be the first to import transformers."""
    db = str(tmp_path / "w.duckdb")
    for command in (["index", "stats", str(qa_index.directory), "--task", str(qa_file)],
                    ["memorize", str(workdir / "run"), "--task", str(qa_file), "--index", str(qa_index.directory),
                     "--checkpoints", "step0"]):
        result = subprocess.run([*GEOWH, *command, "--db", db, "--json"], capture_output=True, text=True, env=_env())
        assert result.returncode == 0, result.stderr
        assert "ImportError" not in result.stderr
        json.loads(result.stdout)
