"""`geowh watch`: checkpoints ingested as a training writes them, never half-written ones; phase lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from test_phases import STEPS, THREE_PHASES, trajectory, write_csv
from tiny import corrupt, save_series, write_docs
from trip import trip_env

GEOWH = [sys.executable, "-c", "from geowh.cli import main; main()"]  # a fresh process, as a user runs it
PROBE = ["--n", "24", "--max-len", "32", "--device", "cpu"]
WRITER_STEPS = (0, 1, 2, 4)

# A training process, as the watch sees it: checkpoint folders appear one after another and
# each safetensors file is written in chunks with pauses. Checkpoint i starts once the test
# has seen the watch ingest checkpoint i - 1 (file go{i}), so the watch is polling while the
# third one pauses mid-file for much longer than the settle interval: only the file's own
# header can tell that it is not whole yet. Layouts alternate: stepN without a marker, the
# HF Trainer's checkpoint-N with trainer_state.json written last.
WRITER = """
import shutil, sys, time
from pathlib import Path

from pathlib import Path

staged, run, signals = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for i, folder in enumerate(sorted(staged.iterdir(), key=lambda p: int(p.name[4:]))):
    step = int(folder.name[4:])
    trainer = i % 2 == 1
    while i and not (signals / f"go{i}").exists():
        time.sleep(0.1)
    target = run / (f"checkpoint-{step}" if trainer else folder.name)
    target.mkdir()
    for f in folder.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, target / f.name)
    data = (folder / "model.safetensors").read_bytes()
    third = len(data) // 3 + 1
    with open(target / "model.safetensors", "wb") as out:
        for k in range(3):
            out.write(data[k * third : (k + 1) * third])
            out.flush()
            time.sleep(3 if (i, k) == (2, 0) else 0.3)
    if trainer:
        (target / "trainer_state.json").write_text('{"global_step": %d}' % step)
"""


def _env(tmp_path):
    return os.environ | {"COLUMNS": "160", "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "GEOWH_HOME": str(tmp_path / "home")}


@pytest.mark.slow
def test_watch_ingests_a_concurrent_training_and_never_reads_a_half_written_checkpoint(tmp_path):
    save_series(tmp_path / "staged", steps=WRITER_STEPS, layers=1, d=32, heads=2)
    docs = write_docs(tmp_path / "docs.txt", limit=80)
    run = tmp_path / "run"
    run.mkdir()
    env = _env(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, tmp_path / "staged", run, tmp_path], env=env)
    watcher = subprocess.Popen(
        GEOWH + ["watch", run, "--probe", docs, *PROBE, "--db", tmp_path / "w.duckdb",
                 "--interval", "0.3", "--settle", "1", "--until-idle", "6", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    events = []
    for line in watcher.stdout:
        events.append(json.loads(line))  # strict: every line is one JSON object
        if events[-1]["kind"] in ("ingested", "failed"):
            (tmp_path / f"go{sum(e['kind'] in ('ingested', 'failed') for e in events)}").touch()
    assert watcher.wait(timeout=60) == 0, watcher.stderr.read()
    assert writer.wait(timeout=60) == 0
    summary = events[-1]
    assert summary["kind"] == "summary" and summary["failed"] == 0 and summary["stopped"] == "idle"
    names = [f"checkpoint-{s}" if i % 2 else f"step{s}" for i, s in enumerate(WRITER_STEPS)]
    assert [e["checkpoint"] for e in events if e["kind"] == "ingested"] == names
    assert any(e["kind"] == "waiting" for e in events), "the watch never saw a checkpoint being written"

    from geowh.warehouse import Warehouse

    runs = Warehouse(tmp_path / "w.duckdb").query("SELECT checkpoint, status FROM runs ORDER BY checkpoint")
    assert set(runs["status"]) == {"ok"} and sorted(runs["checkpoint"]) == sorted(names)


def test_once_ingests_what_is_complete_and_leaves_a_half_written_checkpoint_unrecorded(tmp_path, cli):
    run = save_series(tmp_path / "run", steps=(0, 1, 2), layers=1, d=32, heads=2)
    corrupt(run / "step2")  # as if the trainer were still writing it
    docs = write_docs(tmp_path / "docs.txt", limit=80)
    result = cli(["watch", run, "--probe", docs, *PROBE, "--db", tmp_path / "w.duckdb", "--settle", "0", "--once"])
    assert result.exit_code == 0, result.output
    assert "ok step0" in result.stderr and "ok step1" in result.stderr and "waiting for step2" in result.stderr

    from geowh.warehouse import Warehouse

    wh = Warehouse(tmp_path / "w.duckdb")
    assert wh.query("SELECT checkpoint, status FROM runs ORDER BY checkpoint").rows() == [("step0", "ok"), ("step1", "ok")]
    result = cli(["watch", run, "--probe", docs, *PROBE, "--db", tmp_path / "w.duckdb", "--settle", "0", "--once"])
    assert result.exit_code == 0 and "skipped (already done)" in result.stderr  # resumes like ingest


def test_a_checkpoint_is_ready_only_when_whole_and_marked_or_settled(tmp_path):
    from geowh.ingest.engine.watch import checkpoint_ready

    run = save_series(tmp_path / "run", steps=(0,), layers=1, d=32, heads=2)
    folder = run / "step0"
    now = time.time()
    assert checkpoint_ready(folder, settle=0, now=now)
    assert not checkpoint_ready(folder, settle=60, now=now)  # just written, no marker: not yet
    (folder / "trainer_state.json").write_text("{}")
    assert checkpoint_ready(folder, settle=60, now=now)  # the trainer's marker says it is done
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:-1])
    assert not checkpoint_ready(folder, settle=0, now=now + 3600)  # one byte short is never read
    (folder / "model.safetensors").unlink()
    assert not checkpoint_ready(folder, settle=0, now=now + 3600)


def test_a_line_is_printed_when_a_new_phase_starts_and_only_then(tmp_path, wh):
    """Checkpoints arrive one by one along a warmup → entropy → compression trajectory."""
    from geowh.ingest.engine.watch import WatchSummary, _phases
    from geowh.queries import import_metrics

    rankme, alpha = trajectory(THREE_PHASES, noise=0.005, seed=1)
    events, labels = [], []
    for k in range(6, len(STEPS) + 1, 8):
        write_csv(tmp_path / "t.csv", "live-run", rankme[:k], alpha[:k], steps=STEPS[:k])
        import_metrics(wh, tmp_path / "t.csv")
        labels = _phases(wh, "live-run", labels, WatchSummary("live-run", str(wh.path)), events.append)
    assert {e.kind for e in events} == {"phase"}
    changes = [(e.data["detail"]["before"], e.data["detail"]["after"]) for e in events]
    assert changes == [("warmup", "entropy-seeking"), ("entropy-seeking", "compression-seeking")]
    starts = [e.data["step"] for e in events]
    assert abs(np.searchsorted(STEPS, starts[0]) - np.searchsorted(STEPS, 64)) <= 1
    assert abs(np.searchsorted(STEPS, starts[1]) - np.searchsorted(STEPS, 4000)) <= 1


def test_ctrl_c_stops_a_waiting_watch_cleanly(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # The process signals itself as its first scan of the folder begins: the watch is waiting,
    # whatever the machine's load (tests/trip.py), where a sleep would guess.
    env = _env(tmp_path) | trip_env(tmp_path, "call:_scan", "SIGINT")
    watcher = subprocess.Popen(
        GEOWH + ["watch", run, "--probe", write_docs(tmp_path / "docs.txt", limit=40),
         "--db", tmp_path / "w.duckdb", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 130, err  # as an ingest stopped by Ctrl-C
    assert "Traceback" not in err and "(stopped)" in err and "stopped by SIGINT" in err


def test_watch_refuses_a_missing_folder_in_one_line(tmp_path, cli):
    result = cli(["watch", tmp_path / "nope", "--db", tmp_path / "w.duckdb", "--once"])
    assert result.exit_code == 1
    assert "is not a folder" in result.stderr and "Traceback" not in result.output
