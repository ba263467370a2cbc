"""The §3.3 toy model: the three phases in the main run's raw RankMe, none late in the controls,
determinism, and the rows it writes (METHOD.md §7; docs/toy.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geowh.errors import InputError
from geowh.repro.toy import LATE_FALL, ToyConfig, run_toy, schedule, series, summarize, train, write_toy


def rankme(lam: np.ndarray) -> float:
    p = lam / lam.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.fixture(scope="module")
def default_runs():
    """The rows of the main series and its controls at the default config (a few seconds)."""
    return {model: run_toy(config, model) for model, config in series(ToyConfig()).items()}


def trajectory(rows, metric="rankme"):
    step = {c["checkpoint"]: c["step"] for c in rows["checkpoints"]}
    points = sorted((step[m["checkpoint"]], m["value"]) for m in rows["metrics"] if m["metric"] == metric)
    return np.array([s for s, _ in points]), np.array([v for _, v in points])


def test_the_main_run_falls_then_rises_then_falls_again_in_its_raw_rankme(default_runs):
    steps, r = trajectory(default_runs["toy"])
    lo = int(np.argmin(r))
    hi = lo + int(np.argmax(r[lo:]))
    assert r[0] == pytest.approx(3.0, abs=0.01)  # isotropic start in d = 3
    assert r[lo] < 1.2  # warmup: collapse onto one direction
    assert r[hi] > 2 * r[lo]  # entropy-seeking: more than doubles
    late = steps >= steps[-1] / 2
    assert np.all(r[late] < 0.92 * r[hi])  # compression-seeking: sustained, not one low point
    assert steps[lo] < steps[hi] < steps[-1] / 4


def test_in_the_compression_phase_the_leading_directions_grow_while_the_last_stalls(default_runs):
    rows = default_runs["toy"]
    steps, r = trajectory(rows)
    peak = int(np.argmax(np.where(steps > steps[int(np.argmin(r))], r, 0)))
    s1, s3 = trajectory(rows, "sigma_1")[1], trajectory(rows, "sigma_3")[1]
    assert s1[-1] > 2 * s1[peak]
    assert s3[-1] < 1.5 * s3[peak]


@pytest.mark.parametrize("control", ["toy-uniform", "toy-no-bottleneck", "toy-mse"])
def test_the_controls_expand_and_saturate_without_a_late_fall(default_runs, control):
    summary = summarize(default_runs[control])
    assert summary["late_fall"] < LATE_FALL / 2
    assert not summary["fell_late"]
    assert summarize(default_runs["toy"])["fell_late"]


def test_hard_labels_show_no_compression_whatever_the_bottleneck():
    # The first attempt's setup (label_noise 0): the data are separable, RankMe saturates at d.
    summary = summarize(run_toy(ToyConfig(label_noise=0.0, steps=3000)))
    assert summary["min"] < 2.0
    assert summary["end"] > 2.9 and not summary["fell_late"]


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    config = ToyConfig(steps=600)
    a, b, c = train(config), train(config), train(ToyConfig(steps=600, seed=1))
    assert a.steps == b.steps
    assert all(np.array_equal(x, y) for x, y in zip(a.spectra, b.spectra))
    assert a.losses == b.losses
    assert a.targets_hash != c.targets_hash
    assert not np.allclose(a.spectra[-1], c.spectra[-1])


def test_the_rankme_stored_is_the_effective_rank_of_the_stored_spectrum(default_runs):
    rows = default_runs["toy-mse"]
    spectra = {s["checkpoint"]: np.array(s["eigenvalues"]) for s in rows["spectra"]}
    for m in rows["metrics"]:
        if m["metric"] == "rankme":
            assert m["value"] == pytest.approx(rankme(spectra[m["checkpoint"]]), rel=1e-5)


def test_the_checkpoint_grid_is_half_powers_of_two_then_even():
    grid = schedule(4000)
    assert grid[:8] == [0, 1, 2, 3, 4, 6, 8, 11]
    assert grid[-3:] == [3800, 3900, 4000]
    assert grid == sorted(set(grid)) and 500 in grid and 362 in grid


def test_the_series_land_in_the_warehouse_as_ordinary_trajectories(wh):
    summaries = write_toy(wh, ToyConfig(steps=800))
    assert [s["model"] for s in summaries] == ["toy", "toy-uniform", "toy-no-bottleneck", "toy-mse"]
    runs = wh.query("SELECT model, kind, status, config FROM runs ORDER BY model")
    assert set(runs["kind"]) == {"toy"} and set(runs["status"]) == {"ok"}
    configs = {m: json.loads(c) for m, c in zip(runs["model"], runs["config"])}
    assert configs["toy-no-bottleneck"]["d"] == configs["toy"]["classes"] == 32
    assert configs["toy-uniform"]["skew"] == 0.0 and configs["toy-mse"]["loss"] == "mse"
    t = wh.trajectories(model="toy")
    assert t.height == len(schedule(800))
    assert t["checkpoint"][0] == "step0" and t["stage"].unique().to_list() == ["pretrain"]
    assert set(t["layer"]) == {1} and set(t["pooling"]) == {"none"} and t["probe"][0].startswith("toy-samples-")
    assert {"rankme", "sigma_1", "sigma_2", "sigma_3", "loss"} <= set(t.columns)
    assert t["loss"][-1] < t["loss"][0]
    spectra = wh.query("SELECT model, len(eigenvalues) AS n FROM spectra GROUP BY ALL ORDER BY model")
    assert dict(zip(spectra["model"], spectra["n"])) == {
        "toy": 3, "toy-mse": 3, "toy-no-bottleneck": 32, "toy-uniform": 3}


def test_a_rerun_replaces_the_series_instead_of_mixing_two(wh):
    write_toy(wh, ToyConfig(steps=800), controls=False)
    write_toy(wh, ToyConfig(steps=400, d=2), controls=False)
    t = wh.trajectories(model="toy")
    assert t["step"].max() == 400 and t.height == len(schedule(400))
    assert wh.query("SELECT count(*) AS n FROM metrics WHERE metric = 'sigma_3'")["n"][0] == 0
    assert wh.query("SELECT count(DISTINCT run_id) AS n FROM metrics")["n"][0] == 1


def test_geowh_toy_prints_a_summary_per_series(cli, tmp_path):
    db = tmp_path / "w.duckdb"
    result = cli(["toy", "--db", db, "--steps", 600, "--no-controls", "--json"])
    assert result.exit_code == 0, result.output
    [summary] = json.loads(result.stdout)
    assert summary["model"] == "toy" and summary["config"]["steps"] == 600
    table = cli(["toy", "--db", db, "--steps", 600, "--d", 2, "--no-controls"])
    assert table.exit_code == 0 and "toy" in table.stdout
    assert "fell" in table.stdout and ("│ no " in table.stdout or "│ yes " in table.stdout)


@pytest.mark.parametrize("args, message", [
    (["--d", 40], "d ≤ classes"),
    (["--loss", "hinge"], "loss must be one of ce, mse"),
    (["--label-noise", 1.5], "probability"),
])
def test_impossible_settings_are_one_line_errors(cli, tmp_path, args, message):
    result = cli(["toy", "--db", tmp_path / "w.duckdb", *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    with pytest.raises(InputError):
        ToyConfig(init="orthogonal").check()


def test_the_command_defaults_are_the_library_defaults():
    import dataclasses

    import typer

    from geowh.cli import app

    command = typer.main.get_command(app).commands["toy"]
    defaults = {p.name: p.default for p in command.params}
    for field in dataclasses.fields(ToyConfig):
        assert defaults[field.name] == field.default, field.name
