"""Correlations between series across checkpoints: scipy's numbers, exact and nearest joins."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import PYTHIA_EVALS
from scipy import stats

from geowh.errors import InputError
from geowh.queries import import_evals, import_metrics
from geowh.queries.correlate import correlate, pair

GRID = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 143000])


def metrics_csv(path, model, steps, **columns):
    pl.DataFrame({"model": model, "step": steps, "probe": "fineweb", "layer": 6, **columns}).write_csv(path)


@pytest.fixture
def two_models(wh, tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for model in ("m-a", "m-b"):
        x, y, z = rng.normal(size=(3, len(GRID)))
        y = x + 0.5 * y
        metrics_csv(tmp_path / f"{model}.csv", model, GRID, alpha_req=x, rankme=y, other=z)
        import_metrics(wh, tmp_path / f"{model}.csv")
        data[model] = (x, y)
    return data


@pytest.mark.parametrize("method,test", [("spearman", stats.spearmanr), ("pearson", stats.pearsonr),
                                         ("kendall", stats.kendalltau)])
def test_correlations_equal_scipy_on_the_same_arrays(wh, two_models, method, test):
    found = correlate(wh, "m-a,m-b", "alpha_req", "rankme", method=method)
    assert found["model"].to_list() == ["m-a", "m-b"] and found["n"].to_list() == [len(GRID)] * 2
    for row in found.iter_rows(named=True):
        expected = test(*two_models[row["model"]])
        assert row["rho"] == pytest.approx(expected.statistic, abs=1e-12)
        assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)


def test_exact_join_pairs_only_shared_steps_and_nearest_pairs_mismatched_grids():
    x = pl.DataFrame({"stage": "pretrain", "step": [0, 100, 1000, 10000, 100000], "value": [1.0, 2, 3, 4, 5]})
    y = pl.DataFrame({"stage": "pretrain", "step": [1000, 11000, 95000, 143000], "value": [10.0, 20, 30, 40]})
    assert pair(x, y, "exact")[["step_x", "step_y"]].rows() == [(1000, 1000)]
    near = pair(x, y, "nearest")
    # y is sparser and leads: 143000 is nearest 100000 too, but 100000 is already taken by 95000
    assert near[["step_x", "step_y", "x", "y"]].rows() == [(1000, 1000, 3.0, 10.0), (10000, 11000, 4.0, 20.0),
                                                         (100000, 95000, 5.0, 30.0)]
    far = pl.DataFrame({"stage": "pretrain", "step": [50], "value": [1.0]})
    assert pair(far, y, "nearest").height == 0  # 50 vs 1000 is more than 0.1 decades apart


def test_nearest_join_correlates_an_eval_grid_with_a_metric_grid(wh, tmp_path):
    import_evals(wh, [PYTHIA_EVALS / "pythia-410m" / "zero-shot"])
    sciq = wh.query(
        "SELECT step, value FROM evals WHERE model = 'pythia-410m' AND task = 'sciq' AND metric = 'acc' ORDER BY step"
    )
    # a metric measured one step after each eval checkpoint from step 8 on (a mismatched grid), monotone in sciq
    later = sciq.filter(pl.col("step") >= 8)
    steps = later["step"].to_numpy() + 1
    metrics_csv(tmp_path / "p.csv", "pythia-410m", steps, alpha_req=np.exp(later["value"].to_numpy()))
    import_metrics(wh, tmp_path / "p.csv")
    exact = correlate(wh, "pythia-410m", "alpha_req", "eval:sciq/acc", join="exact")
    nearest = correlate(wh, "pythia-410m", "alpha_req", "eval:sciq/acc", join="nearest")
    assert exact["n"].item() == 0 and np.isnan(exact["rho"].item())
    assert nearest["n"].item() == len(steps) == 23
    assert nearest["rho"].item() == pytest.approx(1.0)


def test_cli_correlate_json_on_imported_pythia_evals(wh, tmp_path, cli):
    import_evals(wh, [PYTHIA_EVALS / "pythia-410m"])
    sciq = wh.query(
        "SELECT step, value FROM evals WHERE model = 'pythia-410m' AND task = 'sciq' AND metric = 'acc' "
        "AND num_fewshot = 0 ORDER BY step"
    )
    alpha = 0.5 + sciq["value"].to_numpy() ** 2
    metrics_csv(tmp_path / "p.csv", "pythia-410m", sciq["step"].to_numpy(), alpha_req=alpha)
    import_metrics(wh, tmp_path / "p.csv")
    result = cli(["correlate", "--model", "pythia-410m", "--x", "alpha_req", "--y", "eval:sciq/acc",
                  "--db", wh.path, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert list(rows[0]) == ["model", "x", "y", "method", "rho", "p_value", "n"]
    expected = stats.spearmanr(alpha, sciq["value"].to_numpy())
    assert rows[0]["n"] == 27 and rows[0]["rho"] == pytest.approx(expected.statistic)
    assert "0-shot" in result.stderr  # the five-shot series exists too, so the choice is said
    five = correlate(wh, "pythia-410m", "alpha_req", "eval:sciq/acc", fewshot=5)
    assert five["n"].item() == 15


def test_unknown_series_and_options_are_clear_errors(wh, two_models, cli):
    with pytest.raises(InputError, match="no eval sciq/acc"):
        correlate(wh, "m-a", "alpha_req", "eval:sciq/acc")
    with pytest.raises(InputError, match="has no memorization"):
        correlate(wh, "m-a", "alpha_req", "memorization")
    with pytest.raises(InputError, match="--method"):
        correlate(wh, "m-a", "alpha_req", "rankme", method="cosine")
    with pytest.raises(InputError, match="eval:TASK/METRIC"):
        correlate(wh, "m-a", "alpha_req", "eval:sciq")
    result = cli(["correlate", "--model", "m-a", "--x", "alpha_req", "--y", "rankme", "--join", "fuzzy", "--db", wh.path])
    assert result.exit_code == 1 and "--join" in result.output
