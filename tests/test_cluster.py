"""Ingest and memorize on Ray: a local cluster of 2 CPU workers runs the checkpoints, this process
alone writes. Results equal a serial run's; resume, --force, failures, a worker that dies and
SIGTERM behave as in a serial run."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_ingest_faults import GEOWH, _runs, _wait_for_line, workdir  # noqa: F401  (workdir: ./run, docs.txt)
from test_memorization import qa_file, qa_index  # noqa: F401  (fixtures)
from tiny import save_series

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'geowh[ray]'")

from geowh.ingest import IngestConfig, Measurement, Selection, ingest  # noqa: E402
from geowh.ingest.engine.cluster import RayExecutor  # noqa: E402

ARGS = ["--probe", "docs.txt", "--n", "64", "--max-len", "32"]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs, shared by the tests that call the library. They are in the
    slow tier: starting the cluster and its workers costs 10-50 s a test (docs/testing.md)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _config(workdir, **extra) -> IngestConfig:
    return IngestConfig(probe=str(workdir / "docs.txt"), n=64, max_len=32, **extra)


def _rows(db, sql: str) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _close(a: list[tuple], b: list[tuple], rel: float = 1e-6) -> bool:
    """Same keys (all but the last column) and values within `rel` of each other."""
    return [r[:-1] for r in a] == [r[:-1] for r in b] and all(
        abs(x[-1] - y[-1]) <= rel * max(abs(x[-1]), abs(y[-1]), 1e-12) for x, y in zip(a, b)
    )


@pytest.mark.slow
def test_ray_ingest_equals_a_serial_one_and_each_run_names_its_worker(cluster, workdir, tmp_path):
    config = _config(workdir, subsets=2)
    serial = ingest(str(workdir / "run"), config, db=tmp_path / "serial.duckdb")
    with RayExecutor(workers=2) as executor:
        distributed = ingest(str(workdir / "run"), config, db=tmp_path / "ray.duckdb", executor=executor)
    assert [c["status"] for c in distributed.checkpoints] == ["ok"] * 4
    assert distributed.config_key == serial.config_key  # so a serial rerun would skip them, and back

    metrics = "SELECT checkpoint, layer, pooling, metric, value FROM metrics ORDER BY ALL"
    assert len(_rows(tmp_path / "ray.duckdb", metrics)) == len(_rows(tmp_path / "serial.duckdb", metrics)) > 0
    assert _close(_rows(tmp_path / "ray.duckdb", metrics), _rows(tmp_path / "serial.duckdb", metrics))
    spectra = "SELECT checkpoint, layer, unnest(eigenvalues) FROM spectra ORDER BY ALL"
    assert _close(_rows(tmp_path / "ray.duckdb", spectra), _rows(tmp_path / "serial.duckdb", spectra))

    # computed on the workers, not here: each run row says which process and device did it
    workers = _rows(tmp_path / "ray.duckdb", "SELECT DISTINCT host, pid, device FROM runs")
    assert all(pid != os.getpid() for _, pid, _ in workers)
    assert {(host, device) for host, _, device in workers} == {(os.uname().nodename, "cpu")}
    pid = ray.remote(lambda: os.getpid()).options(num_cpus=1)
    alive = ray.get([pid.remote() for _ in range(2)])
    assert {pid for _, pid, _ in workers} <= set(alive)  # Ray's own worker processes, still serving


@pytest.mark.slow
def test_the_plan_is_prepared_on_a_worker_with_the_probe_tokenized_once(cluster, workdir):
    from geowh.ingest.engine.plan import plan_ingest
    from geowh.ingest.sources.models import load_tokenizer

    plan = plan_ingest(str(workdir / "run"), _config(workdir))
    with RayExecutor(workers=2) as executor:
        prepared = executor.prepare(plan)
    assert plan.dtype is None and prepared.dtype == "float32"  # resolved where the checkpoints run
    [geometry] = prepared.measurements
    [probe] = geometry.probes.values()  # what every task then reads instead of tokenizing
    assert not plan.measurements[0].probes  # made ready there, not here
    here = plan.measurements[0].probe_for(load_tokenizer(plan.series.checkpoints[0]))
    assert probe.id == here.id and probe.ids == here.ids and len(probe) == 64


@pytest.mark.slow
def test_ray_ingest_resumes_forces_and_records_failed_checkpoints(cluster, workdir, tmp_path):
    from tiny import corrupt

    run = save_series(tmp_path / "run", steps=(0, 1, 2))
    db = tmp_path / "w.duckdb"
    with RayExecutor(workers=2) as executor:
        ingest(str(run), _config(workdir), Selection("step0,step1"), db=db, executor=executor)
        corrupt(run / "step2")
        again = ingest(str(run), _config(workdir), db=db, executor=executor)
        assert [c["status"] for c in again.checkpoints] == ["skipped", "skipped", "failed"]
        assert "step2" in again.checkpoints[2]["error"]
        forced = ingest(str(run), _config(workdir), Selection("step1"), db=db, executor=executor, force=True)
        assert [c["status"] for c in forced.checkpoints] == ["ok"]
    assert _rows(db, "SELECT checkpoint, status, count(*) FROM runs GROUP BY ALL ORDER BY ALL") == [
        ("step0", "ok", 1), ("step1", "ok", 2), ("step2", "failed", 1),
    ]


def _dies(label: str, marker: Path | None = None) -> Measurement:
    """A measurement whose process dies on `label`: every time, or only while `marker` is absent."""

    def measure(loaded, ref, config):
        if ref.label == label and (marker is None or not marker.exists()):
            if marker is not None:
                marker.touch()
            os._exit(1)  # as a kill -9 or the kernel's OOM killer would end it
        return {}

    return Measurement("dies", measure)


@pytest.mark.slow
def test_a_worker_that_dies_is_retried_once_and_then_costs_only_its_checkpoint(cluster, workdir, tmp_path):
    once = tmp_path / "died-once"
    with RayExecutor(workers=2) as executor:
        retried = ingest(str(workdir / "run"), _config(workdir), Selection("step1,step2"), db=tmp_path / "a.duckdb",
                         executor=executor, measurements=[_dies("step1", once)])
        assert once.exists()  # it did die, and the retry computed it
        assert [c["status"] for c in retried.checkpoints] == ["ok", "ok"]

        lost = ingest(str(workdir / "run"), _config(workdir), db=tmp_path / "b.duckdb", executor=executor,
                      measurements=[_dies("step1")])
    assert [c["status"] for c in lost.checkpoints] == ["ok", "failed", "ok", "ok"]
    assert "died twice" in lost.checkpoints[1]["error"]
    rows = _rows(tmp_path / "b.duckdb", "SELECT checkpoint, status, started_at IS NOT NULL FROM runs ORDER BY checkpoint")
    assert rows == [("step0", "ok", True), ("step1", "failed", True), ("step2", "ok", True), ("step4", "ok", True)]


@pytest.mark.slow
def test_memorize_on_ray_equals_a_serial_one_and_leaves_the_index_here(cluster, tmp_path, qa_file, qa_index):  # noqa: F811
    from geowh.ingest.config import MemorizeConfig
    from geowh.ingest.measurements.memorization import Memorization, memorize
    from geowh.warehouse import Warehouse

    run = save_series(tmp_path / "run", steps=(0, 1, 2))
    config = MemorizeConfig(str(qa_file), str(qa_index.directory), batch_size=8)
    serial = memorize(str(run), config, wh=Warehouse(tmp_path / "serial.duckdb"))
    with RayExecutor(workers=2) as executor:
        distributed = memorize(str(run), config, wh=Warehouse(tmp_path / "ray.duckdb"), executor=executor)
    assert [s["status"] for s in distributed] == ["ok"] * 3
    items = "SELECT checkpoint, item, log_p_model FROM memorization_items ORDER BY ALL"
    assert len(_rows(tmp_path / "ray.duckdb", items)) == 3 * 24
    assert _close(_rows(tmp_path / "ray.duckdb", items), _rows(tmp_path / "serial.duckdb", items))
    assert [s["value"] for s in distributed] == pytest.approx([s["value"] for s in serial], rel=1e-6)

    mem = Memorization(str(qa_file), qa_index.directory)
    mem.start(None, None)  # the driver's part: the ∞-gram side
    shipped = ray.cloudpickle.loads(ray.cloudpickle.dumps(mem))
    assert not hasattr(shipped, "index") and shipped.infgram and shipped.config["index"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # bare --ray: a private local instance
    return env | {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.mark.slow
def test_sigterm_stops_a_ray_ingest_as_a_serial_one_and_the_rerun_resumes(workdir, tmp_path):
    """`geowh ingest --ray` from a shell: SIGTERM after the first checkpoint → exit 143, the finished
    ones written, the handed-out one `interrupted`, Ray ended; the same command resumes."""
    db = tmp_path / "w.duckdb"
    proc = subprocess.Popen([*GEOWH, "ingest", "./run", *ARGS, "--n", "400", "--max-len", "128", "--db", str(db),
                             "--ray", "--workers", "1"], cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_line(proc, "ok step0")
    time.sleep(0.3)  # step1 handed out (each checkpoint takes over a second here)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err and "SIGTERM received" not in err
    runs = _runs(db)
    assert runs[0] == ("step0", "ok", None)
    assert ("interrupted", "stopped by SIGTERM") in {r[1:] for r in runs} and "running" not in {r[1] for r in runs}

    again = subprocess.run([*GEOWH, "ingest", "./run", *ARGS, "--n", "400", "--max-len", "128", "--db", str(db),
                            "--ray", "local", "--workers", "2", "--json"], cwd=workdir, env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    statuses = [c["status"] for c in json.loads(again.stdout)["checkpoints"]]
    assert statuses[0] == "skipped" and statuses[1:] == ["ok"] * 3


@pytest.mark.parametrize("args, says", [
    (["--workers", "2"], "go with --ray"),
    # these two start Ray or wait for it: the slow tier
    pytest.param(["--ray", "127.0.0.1:1"], "nothing answers there", marks=pytest.mark.slow),
    pytest.param(["--ray", "local", "--gpus-per-worker", "1"], "has 0 GPU(s)", marks=pytest.mark.slow),
    (["--ray", "local", "--workers", "0"], "at least 1"),
])
def test_a_ray_option_that_cannot_work_is_one_clear_line(workdir, tmp_path, args, says):
    started = time.monotonic()
    result = subprocess.run([*GEOWH, "ingest", "./run", *ARGS, "--db", str(tmp_path / "w.duckdb"), *args],
                            cwd=workdir, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - started < 60  # refused, not retried for minutes
    assert not (tmp_path / "w.duckdb").exists()


@pytest.mark.slow
def test_geowh_memorize_takes_the_ray_options(tmp_path, qa_file, qa_index):  # noqa: F811
    run = save_series(tmp_path / "run", steps=(0, 1))
    args = [*GEOWH, "memorize", str(run), "--task", str(qa_file), "--index", str(qa_index.directory), "--batch-size", "8",
            "--db", str(tmp_path / "w.duckdb"), "--json"]
    refused = subprocess.run([*args, "--gpus-per-worker", "1"], env=_env(), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "go with --ray" in refused.stderr
    driver = subprocess.Popen([*args, "--ray", "local", "--workers", "2"], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    assert [s["status"] for s in json.loads(out)] == ["ok", "ok"]
    assert driver.pid not in {pid for (pid,) in _rows(tmp_path / "w.duckdb", "SELECT pid FROM runs")}  # scored on workers


def test_without_ray_installed_the_option_says_how_to_install_it(workdir, tmp_path):
    hidden = tmp_path / "no-ray"
    hidden.mkdir()
    (hidden / "ray.py").write_text("raise ImportError('No module named ray')\n")  # as where it is not installed
    env = _env() | {"PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([*GEOWH, "ingest", "./run", *ARGS, "--db", str(tmp_path / "w.duckdb"), "--ray"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "pip install 'geowh[ray]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
