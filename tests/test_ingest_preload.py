"""Preloading: a serial ingest reads the next checkpoint into host memory while this one computes.

On by default on a GPU only; forced on here (`Serial(preload=True)`) on the CPU, where it takes
the same path but the move to the device is a no-op.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import pytest
from tiny import corrupt, save_hub_cache, save_series, write_docs

RUN_COLUMNS = "checkpoint, status, error, device, dtype, hub_commit, config_key, kind, probe"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """./run (3 tiny GPT-NeoX checkpoints) and docs.txt."""
    root = tmp_path_factory.mktemp("preload")
    save_series(root / "run", steps=(0, 1, 2))
    write_docs(root / "docs.txt", limit=200)
    return root


def _ingest(workdir, db, preload: bool, run="run"):
    from geowh.ingest import IngestConfig, ingest
    from geowh.ingest.engine.executors import Serial

    config = IngestConfig(probe=str(workdir / "docs.txt"), n=48, max_len=32)
    return ingest(str(workdir / run), config, db=db, executor=Serial(preload=preload))


def _rows(db, sql):
    from geowh.warehouse import Warehouse

    return Warehouse(db).query(sql).rows()


def test_a_preloaded_ingest_writes_exactly_the_rows_of_a_load_in_place(workdir, tmp_path):
    in_place, preloaded = tmp_path / "in_place.duckdb", tmp_path / "preloaded.duckdb"
    assert _ingest(workdir, in_place, preload=False).count("ok") == 3
    assert _ingest(workdir, preloaded, preload=True).count("ok") == 3
    for sql in (
        "select checkpoint, layer, pooling, n_samples, eigenvalues from spectra order by all",
        "select checkpoint, layer, pooling, metric, value from metrics order by all",
        f"select {RUN_COLUMNS} from runs order by checkpoint",
        "select model, parameters, layers, d_model, vocab_size, tokenizer from models",
    ):
        expected = _rows(in_place, sql)
        assert expected and _rows(preloaded, sql) == expected, sql


HUB = """
import json, sys
from geowh.ingest import IngestConfig, ingest
from geowh.ingest.engine.executors import Serial
from geowh.warehouse import Warehouse
rows = {}
for preload in (False, True):
    db = f"{sys.argv[2]}/{preload}.duckdb"
    ingest("hf:tiny-org/tiny-pythia", IngestConfig(probe=sys.argv[1], n=32, max_len=16), db=db,
           executor=Serial(preload=preload))
    rows[preload] = [Warehouse(db).query(sql).rows() for sql in sys.argv[3:]]
print(json.dumps(rows))
"""


# Two hub ingests in a fresh process (the hub's settings are read at import): 15-22 s, so the slow
# tier; the hub path itself stays in the fast one (test_ingest.py).
@pytest.mark.slow
def test_a_preloaded_hub_checkpoint_records_the_commit_of_a_load_in_place(workdir, tmp_path):
    import json
    import os

    cache = save_hub_cache(tmp_path / "hub", "tiny-org/tiny-pythia", ["step0", "step1000"])
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    queries = [f"select {RUN_COLUMNS} from runs order by checkpoint",
               "select checkpoint, layer, metric, value from metrics order by all"]
    done = subprocess.run([sys.executable, "-c", HUB, str(workdir / "docs.txt"), str(tmp_path), *queries],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    runs = rows["false"][0]
    assert [(r[0], r[1]) for r in runs] == [("step0", "ok"), ("step1000", "ok")] and all(r[5] for r in runs)
    assert rows["true"] == rows["false"]


def _record_loads(monkeypatch, log, *, hold=None):
    """Log each load (checkpoint, device, thread) as it starts and ends; `hold(label)` may block it."""
    from geowh.ingest.sources import models

    load = models.load_checkpoint
    loads = []

    def recorded(ref, **kwargs):
        log.append(("load", ref.label, kwargs["device"], threading.current_thread().name))
        if hold:
            hold(ref.label)
        loaded = load(ref, **kwargs)
        loads.append(loaded)
        log.append(("loaded", ref.label))
        return loaded

    monkeypatch.setattr(models, "load_checkpoint", recorded)
    return loads


def test_the_next_checkpoint_loads_in_a_thread_while_this_one_computes(workdir, tmp_path, monkeypatch):
    import geowh.ingest.measurements.geometry as geometry_module

    log = []
    _record_loads(monkeypatch, log)
    geometry = geometry_module.geometry_rows

    def computing(loaded, *args):
        this = loaded.ref.label
        result = geometry(loaded, *args)
        deadline = time.monotonic() + 20  # a tiny checkpoint computes faster than a thread starts: wait for it
        while this in after and not any(e[:2] == ("load", after[this]) for e in log) and time.monotonic() < deadline:
            time.sleep(0.01)
        log.append(("computed", this))
        return result

    after = {"step0": "step1", "step1": "step2"}
    monkeypatch.setattr(geometry_module, "geometry_rows", computing)
    assert _ingest(workdir, tmp_path / "w.duckdb", preload=True).count("ok") == 3
    loads = [e for e in log if e[0] == "load"]
    assert loads == [("load", "step0", "cpu", "MainThread"), ("load", "step1", "cpu", "geowh-preload"),
                     ("load", "step2", "cpu", "geowh-preload")]
    for this, next_one in after.items():
        preload = log.index(("load", next_one, "cpu", "geowh-preload"))
        # started once this one is loaded (one checkpoint ahead, no more), before it is computed
        assert log.index(("loaded", this)) < preload < log.index(("computed", this)), log


def test_without_preloading_each_checkpoint_loads_in_place_on_its_device(workdir, tmp_path, monkeypatch):
    from geowh.ingest import IngestConfig
    from geowh.ingest.engine.executors import Serial
    from geowh.ingest.engine.plan import plan_ingest

    log = []
    _record_loads(monkeypatch, log)
    _ingest(workdir, tmp_path / "w.duckdb", preload=False)
    assert [e for e in log if e[0] == "load"] == [("load", f"step{s}", "auto", "MainThread") for s in (0, 1, 2)]
    plan = plan_ingest(str(workdir / "run"), IngestConfig(probe=str(workdir / "docs.txt"), device="cpu"))
    assert not Serial().preloading(plan)  # auto: a CPU run loads in place
    assert Serial(preload=True).preloading(plan)


def test_auto_preloads_on_a_gpu(workdir, monkeypatch):
    import torch

    from geowh.ingest import IngestConfig
    from geowh.ingest.engine.executors import Serial
    from geowh.ingest.engine.plan import plan_ingest
    from geowh.ingest.sources import models

    plan = plan_ingest(str(workdir / "run"), IngestConfig(probe=str(workdir / "docs.txt"), device="auto"))
    monkeypatch.setattr(models, "resolve_device", lambda device: torch.device("cuda:0"))
    assert Serial().preloading(plan)
    assert not Serial(preload=False).preloading(plan)


def test_a_corrupt_next_checkpoint_fails_only_itself_with_the_error_of_a_load_in_place(workdir, tmp_path):
    shutil.copytree(workdir / "run", tmp_path / "run")
    corrupt(tmp_path / "run" / "step1")
    errors = {}
    for preload in (False, True):
        db = tmp_path / f"{preload}.duckdb"
        summary = _ingest(workdir, db, preload=preload, run=tmp_path / "run")
        assert [c["status"] for c in summary.checkpoints] == ["ok", "failed", "ok"]
        errors[preload] = _rows(db, f"select {RUN_COLUMNS} from runs order by checkpoint")
    assert "step1" in errors[True][1][2] and errors[True] == errors[False]


def test_a_bug_in_the_background_load_stops_the_run_with_its_error(workdir, tmp_path, monkeypatch):
    from geowh.ingest.sources import models

    load = models.load_checkpoint

    def buggy(ref, **kwargs):
        if threading.current_thread().name == "geowh-preload":
            raise ZeroDivisionError("a bug in the loader")
        return load(ref, **kwargs)

    monkeypatch.setattr(models, "load_checkpoint", buggy)
    db = tmp_path / "w.duckdb"
    with pytest.raises(ZeroDivisionError, match="a bug in the loader"):
        _ingest(workdir, db, preload=True)
    assert _rows(db, "select checkpoint, status, error from runs order by checkpoint") == [
        ("step0", "ok", None), ("step1", "failed", "ZeroDivisionError: a bug in the loader")]


def test_ctrl_c_stops_at_once_and_the_model_loading_ahead_is_released_when_done(workdir, tmp_path, monkeypatch):
    import geowh.ingest.measurements.geometry as geometry_module
    from geowh.signals import Interrupted

    go = threading.Event()
    log = []
    loads = _record_loads(monkeypatch, log, hold=lambda label: label == "step1" and go.wait(60))

    def interrupted(loaded, *args):
        while not any(e[:2] == ("load", "step1") for e in log):  # the thread is reading step1 now
            time.sleep(0.01)
        raise Interrupted()

    monkeypatch.setattr(geometry_module, "geometry_rows", interrupted)
    db = tmp_path / "w.duckdb"
    with pytest.raises(Interrupted):
        _ingest(workdir, db, preload=True)
    assert ("loaded", "step1") not in log  # stopped without waiting for the thread
    go.set()
    for thread in threading.enumerate():
        if thread.name == "geowh-preload":
            thread.join(60)
    assert [loaded.ref.label for loaded in loads] == ["step0", "step1"]
    assert all(loaded.model is None for loaded in loads)  # both released: nothing left in memory
    assert _rows(db, "select checkpoint, status from runs order by checkpoint") == [("step0", "interrupted")]


EXIT = """
import sys, threading, time
from geowh.ingest import IngestConfig, ingest
from geowh.ingest.sources import models
from geowh.ingest.engine.executors import Serial
import geowh.ingest.measurements.geometry as geometry_module

load = models.load_checkpoint
def slow(ref, **kwargs):
    if threading.current_thread().name == "geowh-preload":
        time.sleep(600)
    return load(ref, **kwargs)
def stop(*args):
    while not any(t.name == "geowh-preload" for t in threading.enumerate()):
        time.sleep(0.01)
    raise KeyboardInterrupt
models.load_checkpoint, geometry_module.geometry_rows = slow, stop
ingest(sys.argv[1], IngestConfig(probe=sys.argv[2], n=16, max_len=16), db=sys.argv[3], executor=Serial(preload=True))
"""


def test_an_interrupted_process_exits_without_waiting_for_the_load_ahead(workdir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", EXIT, str(workdir / "run"), str(workdir / "docs.txt"),
                           str(tmp_path / "w.duckdb")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Interrupted: SIGINT" in proc.stderr, proc.stderr  # not the timeout
