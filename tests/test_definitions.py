"""Results keyed by what produced them: the metric definitions decide "already done", the code
version is recorded; `geowh info` names rows of older definitions, `recompute --metric` refreshes them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from tiny import save_series, write_docs

from geowh import spectrum_math
from geowh.errors import InputError
from geowh.ingest import IngestConfig, ingest
from geowh.queries.recompute import recompute
from geowh.spectrum_math import REGISTRY, compute_metrics, definitions_fingerprint

pytestmark = pytest.mark.slow  # tiny ingests: 7-27 s each on the loaded 2-core machine

CONFIG = IngestConfig(probe="docs.txt", n=40, max_len=32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("definitions")
    save_series(root / "run", steps=(0, 1))
    write_docs(root / "docs.txt", limit=200)
    return root


def _ingest(workdir, db, config=CONFIG):
    return ingest(str(workdir / "run"), config.__class__(**{**config.__dict__, "probe": str(workdir / "docs.txt")}), db=db)


def _statuses(summary) -> list[str]:
    return [c["status"] for c in summary.checkpoints]


def _changed(monkeypatch, name: str, **change) -> None:
    """The registry as it would be after an edit of metric `name` (a default, its version)."""
    monkeypatch.setitem(REGISTRY, name, replace(REGISTRY[name], **change))


def test_a_changed_metric_default_measures_finished_checkpoints_again(workdir, tmp_path, monkeypatch):
    db = tmp_path / "w.duckdb"
    assert _statuses(_ingest(workdir, db)) == ["ok", "ok"]
    assert _statuses(_ingest(workdir, db)) == ["skipped", "skipped"]

    _changed(monkeypatch, "rankme", defaults=REGISTRY["rankme"].defaults | {"eps": 1e-6})
    again = _ingest(workdir, db)
    assert _statuses(again) == ["ok", "ok"], "a definition changed: the old rows must not count as done"
    assert again.remeasured == ["step0", "step1"]  # and it says why they are measured again
    assert _ingest(workdir, db).remeasured == []
    from geowh.warehouse import Warehouse

    runs = Warehouse(db).query("SELECT definitions, config FROM runs WHERE status = 'ok' ORDER BY started_at")
    assert runs["definitions"].to_list()[-2:] == [definitions_fingerprint()] * 2
    assert runs["definitions"][0] != runs["definitions"][-1]
    assert json.loads(runs["config"][-1])["definitions"]["rankme"] == REGISTRY["rankme"].fingerprint
    eps = Warehouse(db).query("SELECT DISTINCT (params->>'$.eps')::DOUBLE AS eps FROM metrics WHERE metric = 'rankme'")
    assert eps["eps"].to_list() == [1e-6]


def test_a_new_commit_is_recorded_in_the_row_but_does_not_measure_again(workdir, tmp_path, monkeypatch):
    from geowh.warehouse import Warehouse, runs

    db = tmp_path / "w.duckdb"
    _ingest(workdir, db)
    monkeypatch.setattr(runs, "code_commit", lambda: "0" * 40)
    assert _statuses(_ingest(workdir, db)) == ["skipped", "skipped"]
    # this checkout's commit is what the first rows recorded (a fresh clone runs the tests from one)
    commits = Warehouse(db).query("SELECT DISTINCT code_commit FROM runs")["code_commit"].to_list()
    assert len(commits) == 1 and commits[0] is not None and len(commits[0].removesuffix("-dirty")) == 40


def test_the_fingerprint_changes_with_a_definition_and_only_with_it(monkeypatch):
    before = definitions_fingerprint()
    _changed(monkeypatch, "alpha_req", version=2)
    assert definitions_fingerprint() != before
    monkeypatch.undo()
    assert definitions_fingerprint() == before
    _changed(monkeypatch, "stable_rank", outputs=("stable_rank", "stable_rank_log"))
    assert definitions_fingerprint() != before
    monkeypatch.undo()
    monkeypatch.setitem(REGISTRY, "trace", replace(REGISTRY["stable_rank"], name="trace"))
    assert definitions_fingerprint() != before


def test_info_names_rows_of_older_definitions_and_recompute_metric_refreshes_them(workdir, tmp_path, monkeypatch, cli):
    from geowh.warehouse import Warehouse

    db = tmp_path / "w.duckdb"
    _ingest(workdir, db)
    assert Warehouse(db).info()["stale_metrics"] == []

    _changed(monkeypatch, "rankme", version=2)
    # a parameterless metric added after the ingest
    monkeypatch.setitem(REGISTRY, "log_trace", spectrum_math.Metric(
        "log_trace", "log Σλ", lambda lam: (float(np.log(lam.sum())), {}), {}, ("log_trace",)))
    shown = cli(["ingest", workdir / "run", "--probe", workdir / "docs.txt", "--n", "40", "--max-len", "32", "--db", db,
                 "--checkpoints", "step0"])
    assert shown.exit_code == 0 and "measured again: step0" in shown.output, shown.output
    stale = Warehouse(db).info()["stale_metrics"]
    assert [(s["metric"], s["rows"], s["why"]) for s in stale] == [("rankme", 1, "its definition changed since")]  # step1
    shown = cli(["info", "--db", db])
    assert shown.exit_code == 0 and "older definitions" in shown.output and "--metric" in shown.output

    done = recompute(db, names=["rankme", "log_trace"])
    assert sorted(done["metric"].to_list()) == ["log_trace", "rankme"]
    assert Warehouse(db).info()["stale_metrics"] == []
    spectra = Warehouse(db).query("SELECT checkpoint, eigenvalues FROM spectra ORDER BY checkpoint")
    rows = Warehouse(db).query("SELECT checkpoint, value FROM metrics WHERE metric = 'log_trace' ORDER BY checkpoint")
    assert rows["value"].to_list() == pytest.approx([float(np.log(sum(e))) for e in spectra["eigenvalues"].to_list()], rel=1e-9)
    # the trajectories view has the backfilled metric's column, under its own name
    assert "log_trace" in Warehouse(db).query("SELECT * FROM trajectories").columns


def test_a_backfill_leaves_values_measured_with_subsets_alone(wh):
    lam = np.arange(1, 60, dtype=float) ** -1.0
    at = {"model": "m", "checkpoint": "step0", "probe": "p", "layer": 2, "pooling": "last", "run_id": "r"}
    wh.write({
        "models": [{"model": "m"}], "checkpoints": [{"model": "m", "checkpoint": "step0", "step": 0}],
        "runs": [{"run_id": "r", "kind": "geometry", "model": "m", "status": "ok", "config": {"subsets": 4}}],
        "spectra": [at | {"n_samples": 100, "d": 59, "eigenvalues": lam.tolist()}],
        "metrics": [at | {"metric": "rankme", "value": 7.0, "stderr": 0.5, "params": {"subsets": 4}}],
    })
    with pytest.raises(InputError, match="--subsets"):
        recompute(wh, names=["rankme"])
    assert wh.query("SELECT value, stderr FROM metrics").row(0) == (7.0, 0.5)
    # with a parameter it is a variant beside the stored value, as before
    recompute(wh, names=["rankme"], max_components=None)
    expected = {v.metric: v.value for v in compute_metrics(lam, max_components=None)}["rankme"]
    assert wh.query("SELECT value FROM metrics WHERE metric = 'rankme@max_components=all'").item() == pytest.approx(expected)
