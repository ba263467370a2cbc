"""Only a dead process's `running` row is marked interrupted: a concurrent ingest of the same model
keeps its live row (issue 17.6: marking every running row of the model failed no test)."""

from __future__ import annotations

import subprocess
import sys
import time

from geowh.warehouse import utcnow
from geowh.warehouse.runs import run_row


def _running(run_id: str, pid: int, model: str = "m", started_at=None) -> dict:
    return run_row(run_id, "geometry", model, "running", checkpoint="step1", started_at=started_at or utcnow()) | {"pid": pid}


def test_a_live_concurrent_run_keeps_its_running_row_and_a_dead_ones_is_interrupted(wh):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        time.sleep(0.05)  # the row starts after its process did, as a real run's does
        wh.write({"runs": [_running("live", alive.pid), _running("gone", dead.pid),
                           _running("other-model", dead.pid, model="n")]})
        assert wh.close_stale_runs("m") == 1
        status = dict(wh.query("SELECT run_id, status FROM runs").rows())
        assert status == {"live": "running", "gone": "interrupted", "other-model": "running"}
        info = wh.info()
        assert info["running_runs"] == 1 and info["interrupted_runs"] == 2  # n's dead row counts, unmarked
    finally:
        alive.kill()
        alive.wait()


def test_an_ingest_leaves_another_live_ingests_running_row_of_the_same_model(tmp_path):
    """End to end: the engine's first act (closing stale rows) spares the other process's row."""
    from tiny import save_series, write_docs

    from geowh.ingest import IngestConfig, ingest
    from geowh.warehouse import Warehouse

    save_series(tmp_path / "run", steps=(0,))
    write_docs(tmp_path / "docs.txt", limit=100)
    db = tmp_path / "w.duckdb"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        time.sleep(0.05)
        Warehouse(db).write({"runs": [_running("theirs", other.pid, model="run") | {"checkpoint": "step7"}]})
        summary = ingest(str(tmp_path / "run"), IngestConfig(probe=str(tmp_path / "docs.txt"), n=20, max_len=16), db=db)
        assert summary.count("ok") == 1
        assert Warehouse(db).query("SELECT status FROM runs WHERE run_id = 'theirs'").item() == "running"
    finally:
        other.kill()
        other.wait()
