"""`geowh recompute`: metrics from stored spectra with other parameters, beside the defaults."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from geowh.errors import InputError
from geowh.queries.recompute import recompute
from geowh.spectrum_math import compute_metrics

GEOWH = [sys.executable, "-c", "from geowh.cli import main; main()"]


def stored(wh, checkpoints: int = 3, d: int = 300):
    """A model whose spectra (power laws of different slopes) and default metrics are stored."""
    rows = {"models": [{"model": "m", "family": "test"}], "checkpoints": [], "spectra": [], "metrics": []}
    spectra = {}
    for i in range(checkpoints):
        label = f"step{i}"
        lam = np.arange(1, d + 1, dtype=float) ** -(0.6 + 0.3 * i) * (1 + 0.1 * np.sin(np.arange(d) + i))
        spectra[label] = lam
        at = {"model": "m", "checkpoint": label, "probe": "p", "layer": 2, "pooling": "last", "run_id": "r0"}
        rows["checkpoints"].append({"model": "m", "checkpoint": label, "step": i})
        rows["spectra"].append(at | {"n_samples": 1000, "d": d, "eigenvalues": lam.tolist()})
        rows["metrics"] += [at | {"metric": v.metric, "value": v.value, "params": v.params} for v in compute_metrics(lam)]
    wh.write(rows)
    return spectra


def test_recompute_with_another_fit_range_equals_compute_on_the_stored_spectrum(wh):
    spectra = stored(wh)
    before = wh.query("SELECT * FROM metrics ORDER BY checkpoint, metric")
    summary = recompute(wh, model="m", fit_start=10, fit_end=200)
    assert set(summary["metric"]) == {"alpha_req@fit_end=200,fit_start=10", "alpha_req_r2@fit_end=200,fit_start=10"}
    new = wh.query("SELECT checkpoint, value FROM metrics WHERE metric = 'alpha_req@fit_end=200,fit_start=10'")
    for label, value in new.iter_rows():
        expected = {v.metric: v.value for v in compute_metrics(spectra[label], fit_start=10, fit_end=200)}
        assert value == pytest.approx(expected["alpha_req"], rel=1e-12)
        assert not math.isclose(value, {v.metric: v.value for v in compute_metrics(spectra[label])}["alpha_req"])
    # The default rows are untouched, and trajectories' alpha_req is still the default one.
    assert wh.query("SELECT * FROM metrics WHERE metric NOT LIKE '%@%' ORDER BY checkpoint, metric").equals(before)
    traj = wh.query("SELECT checkpoint, alpha_req, \"alpha_req@fit_end=200,fit_start=10\" AS a FROM trajectories")
    assert traj.height == 3 and (traj["alpha_req"] != traj["a"]).all()
    runs = wh.query("SELECT kind, model, status, config, numpy_version, scipy_version FROM runs")
    assert runs.rows()[0][:3] == ("recompute", "m", "ok")
    import numpy
    import scipy

    assert runs.rows()[0][4:] == (numpy.__version__, scipy.__version__)  # built by run_row, as every run row
    assert json.loads(runs["config"][0])["params"] == {"fit_start": 10, "fit_end": 200}


def test_recompute_keeps_metrics_that_take_none_of_the_parameters_out(wh):
    stored(wh, checkpoints=1)
    summary = recompute(wh, max_components=None)
    assert set(summary["metric"]) == {"rankme@max_components=all", "rankme_sv@max_components=all",
                                      "spectral_entropy@max_components=all"}
    with pytest.raises(InputError, match="takes"):
        recompute(wh, names=["stable_rank"], fit_start=3)


def test_recompute_refuses_what_it_cannot_do(wh):
    with pytest.raises(InputError, match="no stored spectra"):
        recompute(wh, fit_start=3)
    stored(wh, checkpoints=1)
    with pytest.raises(InputError, match="nothing to recompute"):
        recompute(wh)
    with pytest.raises(InputError, match="unknown metric parameter"):
        recompute(wh, fit_begin=3)


def test_the_command_recomputes_and_reports_json(wh, tmp_path):
    stored(wh, checkpoints=2)
    out = subprocess.run(
        [*GEOWH, "recompute", "--model", "m", "--fit-start", "10", "--fit-end", "200",
         "--metric", "alpha_req", "--db", str(wh.path), "--json"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"model": "m", "metric": "alpha_req@fit_end=200,fit_start=10", "rows": 2},
        {"model": "m", "metric": "alpha_req_r2@fit_end=200,fit_start=10", "rows": 2},
    ]
    refused = subprocess.run([*GEOWH, "recompute", "--fit-start", "3", "--db", str(tmp_path / "none.duckdb")],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "no stored spectra" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "none.duckdb").exists()


@pytest.mark.parametrize("params, named", [({"fit_end": 99999999999}, "fit_end=99999999999"),
                                           ({"fit_start": 10, "fit_end": 301}, "fit_end=301"),
                                           ({"max_components": 5000}, "max_components=5000")])
def test_a_rank_past_the_end_of_a_spectrum_is_refused_not_clipped_under_its_name(wh, params, named):
    # issue 18: the fit was clipped to the 300 eigenvalues, and stored as alpha_req@fit_end=99999999999
    stored(wh, checkpoints=2, d=300)
    before = wh.query("SELECT count(*) AS n FROM metrics")["n"].item()
    with pytest.raises(InputError, match=f"{named} is past the end of the spectra.*has 300 eigenvalues"):
        recompute(wh, model="m", **params)
    assert wh.query("SELECT count(*) AS n FROM metrics")["n"].item() == before
    assert recompute(wh, model="m", fit_start=10, fit_end=300).height == 2  # the last rank itself is fine
