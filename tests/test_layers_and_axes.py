"""Per-layer phase maps, the FLOPs axis, αReQ fit diagnostics and the isotropic baseline."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from report_data import MODELS, build

from geowh.errors import InputError
from geowh.spectrum_math import compute_metrics, isotropic_baseline, isotropic_spectrum, metrics_dict


@pytest.fixture
def wh(tmp_path):
    return build(tmp_path / "w.duckdb")


# -- fit diagnostics ------------------------------------------------------------------------------


def _write_spectrum(wh, checkpoint: str, lam: np.ndarray) -> None:
    key = {"model": "small", "checkpoint": checkpoint, "probe": "probe-abc", "layer": 9, "pooling": "last"}
    wh.write({
        "checkpoints": [{"model": "small", "checkpoint": checkpoint, "step": 10**6, "tokens": 1.0}],
        "metrics": [{**key, "metric": v.metric, "value": v.value, "params": v.params}
                    for v in compute_metrics(lam, ["alpha_req"])],
    })


def test_every_alpha_req_carries_its_fit_quality_in_sql_and_poor_or_short_fits_are_flagged(wh):
    k = np.arange(1, 201, dtype=float)
    _write_spectrum(wh, "power-law", k**-1.2)                            # a clean power law: ok
    _write_spectrum(wh, "narrow", np.arange(1, 26, dtype=float) ** -1.2)  # d = 25: 14 ranks fitted, short
    bent = np.where(k < 40, k**-0.3, 40**-0.3 * (k / 40) ** -4.0)         # a broken power law: poor R²
    _write_spectrum(wh, "bent", bent)
    fits = {r["checkpoint"]: r for r in wh.query(
        "SELECT * FROM alpha_req_fits WHERE model = 'small' AND layer = 9").to_dicts()}
    assert fits["power-law"]["flag"] == "ok" and fits["power-law"]["r2"] == pytest.approx(1.0)
    assert (fits["power-law"]["fit_start"], fits["power-law"]["fit_end"], fits["power-law"]["n_fit_points"]) == (12, 100, 89)
    assert fits["narrow"]["flag"] == "short" and fits["narrow"]["n_fit_points"] == 14
    assert fits["bent"]["flag"] == "poor" and fits["bent"]["r2"] < 0.9
    # R² is the stored alpha_req_r2, and trajectories shows the flag beside the value.
    r2 = wh.query("SELECT value FROM metrics WHERE checkpoint = 'bent' AND metric = 'alpha_req_r2'")["value"][0]
    assert fits["bent"]["r2"] == r2
    shown = wh.query("SELECT checkpoint, alpha_req_fit FROM trajectories WHERE layer = 9 ORDER BY checkpoint")
    assert shown.rows() == [("bent", "poor"), ("narrow", "short"), ("power-law", "ok")]


def test_flagged_fits_are_counted_in_the_phase_evidence(wh, cli):
    from geowh.queries.phases import phases

    wh.execute("UPDATE metrics SET value = 0.5 WHERE model = 'large' AND layer = 2 AND metric = 'alpha_req_r2' "
               "AND checkpoint IN ('step0', 'step1', 'step2')")
    found = phases(wh, "large", layer=2, store=False)
    assert found.height == 3
    evidence = [json.loads(e) for e in found["evidence"]]
    assert evidence[0]["alpha_req_fits_flagged"] == 3 and evidence[0]["alpha_req_fit_flags"] == {"poor": 3}
    assert all(e["alpha_req_fits_flagged"] == 0 for e in evidence[1:])
    shown = cli(["phases", "--db", wh.path, "--model", "large", "--layer", "2", "--no-store"])
    assert shown.exit_code == 0 and "flagged" in shown.stdout
    assert [line.split("│")[-2].strip() for line in shown.stdout.splitlines() if "seeking" in line or "warmup" in line] == ["3", "0", "0"]


# -- the isotropic baseline -----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(2000, 256), (200, 512), (1001, 1000)])
def test_the_isotropic_baseline_is_what_gaussian_features_of_that_n_and_d_give(n, d):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))
    x -= x.mean(axis=0)
    sampled = metrics_dict(compute_metrics(np.linalg.eigvalsh(x.T @ x / n), ["rankme", "alpha_req"]))
    computed = isotropic_baseline(n, d)
    assert computed["rankme"] == pytest.approx(sampled["rankme"], rel=0.01)
    assert computed["alpha_req"] == pytest.approx(sampled["alpha_req"], rel=0.02)
    lam = isotropic_spectrum(n, d)
    assert lam.shape == (d,) and np.count_nonzero(lam) == min(n - 1, d) and np.all(np.diff(lam) <= 0)


# -- the FLOPs axis -------------------------------------------------------------------------------


def test_phases_on_the_flops_axis_store_six_n_d_and_models_of_two_sizes_line_up(wh):
    from geowh.queries.phases import phases

    per_step = MODELS["small"][1]
    for model, (params, _) in MODELS.items():
        found = phases(wh, model, layer=0, x="flops")
        by_step = phases(wh, model, layer=0, x="step", store=False)
        assert found["end_flops"].to_list() == [6.0 * params * s * per_step for s in found["end_step"]]
        assert found["end_step"].to_list() == by_step["end_step"].to_list()  # log(6 N D) is log D shifted
    stored = wh.query("SELECT model, end_flops FROM phases WHERE layer = 0 AND phase = 'warmup' ORDER BY model")
    assert stored["end_flops"][0] / stored["end_flops"][1] == pytest.approx(MODELS["large"][0] / MODELS["small"][0])


def test_the_flops_axis_names_the_model_whose_parameters_or_tokens_are_unknown(wh, cli):
    from geowh.queries.correlate import correlate
    from geowh.queries.phases import phases
    from geowh.queries.plot import plot

    wh.execute("UPDATE models SET parameters = NULL WHERE model = 'large'")
    with pytest.raises(InputError, match=r"parameter count of large .*--x step or tokens"):
        phases(wh, "large", x="flops")
    with pytest.raises(InputError, match=r"--axis flops needs the parameter count of large"):
        correlate(wh, "small,large", "alpha_req", "eval:sciq/acc", join="nearest", axis="flops")
    result = cli(["plot", "--db", wh.path, "--model", "small,large", "--x", "flops", "--terminal"])
    assert result.exit_code == 1 and "of large" in result.output and "Traceback" not in result.output
    wh.execute("UPDATE checkpoints SET tokens = NULL WHERE model = 'small' AND step = 4")
    with pytest.raises(InputError, match=r"tokens seen at each checkpoint of small .* 1 of its checkpoints"):
        plot(wh, "small", x="flops", terminal=True)


def test_correlate_nearest_pairs_on_the_flops_axis(wh):
    from geowh.queries.correlate import correlate

    # The eval is measured at other steps than the geometry: only a nearest join pairs them.
    wh.execute("UPDATE evals SET checkpoint = 'e' || step, step = step + 1 WHERE model = 'small'")
    wh.write({"checkpoints": [{"model": "small", "checkpoint": f"e{s}", "step": s + 1, "tokens": (s + 1) * MODELS["small"][1]}
                              for s in [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000]]})
    exact = correlate(wh, "small", "alpha_req", "eval:sciq/acc")
    near = correlate(wh, "small", "alpha_req", "eval:sciq/acc", join="nearest", axis="flops")
    by_step = correlate(wh, "small", "alpha_req", "eval:sciq/acc", join="nearest", axis="step")
    assert exact["n"][0] <= 3 and near["n"][0] >= 10  # exact: only the few steps s + 1 that are also geometry steps
    assert near["rho"][0] == pytest.approx(by_step["rho"][0])


# -- per-layer phase maps -------------------------------------------------------------------------


def test_a_phase_map_segments_every_layer_and_shows_deeper_layers_leave_warmup_later(wh, cli):
    from geowh.queries import phase_map

    found = phase_map(wh, "large")
    assert sorted(found["layer"].unique().to_list()) == [0, 1, 2]
    warmup_end = dict(found.filter(pl.col("phase") == "warmup").select("layer", "end_step").rows())
    assert warmup_end[0] < warmup_end[2]  # report_data: the collapse reaches layer 2 later
    stored = wh.query("SELECT DISTINCT layer FROM phases WHERE model = 'large' ORDER BY layer")["layer"].to_list()
    assert stored == [0, 1, 2]
    result = cli(["phases", "--db", wh.path, "--model", "large", "--layers", "all", "--no-store"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in lines if line.split("│")[1].strip()] == ["0", "1", "2"]
    assert f"{warmup_end[0]}, 1000" in result.output.replace("1k", "1000")
    as_json = json.loads(cli(["phases", "--db", wh.path, "--model", "large", "--layers", "0,2", "--json"]).stdout)
    assert {r["layer"] for r in as_json} == {0, 2} and isinstance(as_json[0]["evidence"], dict)


def test_the_layer_heatmap_is_drawn_with_phase_boundaries_to_png_and_terminal(wh, tmp_path, cli):
    from geowh.queries.plot import plot

    out = tmp_path / "layers.png"
    points = plot(wh, "large", "rankme", out=out, layers="all")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and set(points["layer"].to_list()) == {0, 1, 2}
    result = cli(["plot", "--db", wh.path, "--model", "large", "--metric", "rankme", "--layers", "all", "--terminal"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "│" in line and line.split("│")[0].strip().isdigit()]
    assert [r.split("│")[0].strip() for r in rows] == ["2", "1", "0"]  # top layer first
    # Each layer's boundaries are marked where its next phase starts: layer 0 earlier than layer 2.
    assert all(r.count("┃") == 2 for r in rows)
    assert rows[2].split("│")[1].index("┃") < rows[0].split("│")[1].index("┃")


def test_plot_baseline_draws_the_isotropic_reference_of_the_same_n_and_d(wh, tmp_path, cli):
    result = cli(["plot", "--db", wh.path, "--model", "small", "--metric", "rankme", "--baseline", "--terminal"])
    assert result.exit_code == 0, result.output
    assert "small isotropic" in result.output
    top = isotropic_baseline(400, 64)["rankme"]
    assert f"{top:.3g}"[:2] in result.output  # the y axis reaches the baseline (about 60)
