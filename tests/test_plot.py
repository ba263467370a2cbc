"""Plots: a PNG with phases shaded, several models overlaid, and the terminal variant."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import PYTHIA_EVALS

from geowh.errors import InputError
from geowh.queries import import_evals, import_metrics
from geowh.queries.plot import plot

STEPS = np.array([0] + [2**k for k in range(10)] + list(range(1000, 143001, 4000)))


@pytest.fixture
def two_models(wh, tmp_path):
    t = np.log10(STEPS + 1)
    knots = np.log10(np.array([0, 64, 4000, 143000]) + 1)
    for i, model in enumerate(("pythia-410m", "pythia-160m")):
        rankme = np.exp(np.interp(t, knots, np.log([300, 60, 180, 120])) + 0.05 * i)
        alpha = np.interp(t, knots, [0.4, 1.2, 0.7, 0.95]) + 0.05 * i
        pl.DataFrame({"model": model, "step": STEPS, "probe": "fineweb", "layer": 12,
                      "rankme": rankme, "alpha_req": alpha}).write_csv(tmp_path / f"{model}.csv")
        import_metrics(wh, tmp_path / f"{model}.csv")
    import_evals(wh, [PYTHIA_EVALS / "pythia-410m" / "zero-shot"])
    return wh


def test_a_png_is_drawn_with_evals_and_two_models(two_models, tmp_path):
    out = tmp_path / "fig.png"
    points = plot(two_models, "pythia-410m,pythia-160m", "rankme,alpha_req", "sciq/acc", out=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert set(points["series"]) == {"rankme", "alpha_req", "eval:sciq/acc"}
    assert points.filter(pl.col("series") == "rankme").group_by("model").len().sort("model")["len"].to_list() == [
        len(STEPS), len(STEPS)]
    assert points.filter(pl.col("series") == "eval:sciq/acc")["model"].unique().to_list() == ["pythia-410m"]
    assert points["step"].min() == 0  # step 0 is drawn (symlog axis)


def test_the_terminal_plot_is_text_with_every_panel(two_models):
    stream = io.StringIO()
    plot(two_models, "pythia-410m,pythia-160m", "rankme,alpha_req", terminal=True, stream=stream, size=(90, 14))
    text = stream.getvalue()
    assert len(text.splitlines()) >= 2 * 14 - 2
    assert "rankme" in text and "alpha_req" in text and "pythia-160m" in text and "1e+05" in text
    assert "\x1b[" not in text  # not a terminal: no colour codes


def test_cli_plot_writes_the_png_and_draws_in_the_terminal(two_models, tmp_path, cli):
    out = tmp_path / "cli.png"
    result = cli(["plot", "--model", "pythia-410m", "--eval", "sciq/acc", "--out", out, "--db", two_models.path])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 20_000
    shown = cli(["plot", "--model", "pythia-160m", "--terminal", "--x", "tokens", "--db", two_models.path])
    assert shown.exit_code == 1 and "--x step" in shown.output  # imported without tokens: said, not drawn empty
    shown = cli(["plot", "--model", "pythia-410m", "--terminal", "--db", two_models.path])
    assert shown.exit_code == 0 and len(shown.stdout.strip()) > 500


def test_nowhere_to_draw_is_an_error(wh):
    with pytest.raises(InputError, match="--out"):
        plot(wh, "pythia-410m")


def test_queries_never_import_torch_transformers_or_infini_gram():
    code = (
        "import sys, geowh.queries, geowh.queries.plot, geowh.cli.queries\n"
        "print(sorted(m for m in ('torch', 'transformers', 'infini_gram') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_terminal_plot_shades_the_phases_in_order(two_models):
    stream = io.StringIO()
    plot(two_models, "pythia-410m", "rankme", terminal=True, stream=stream, size=(90, 14))
    text = stream.getvalue()
    assert text.splitlines()[-1] == "phases: · warmup  ░ entropy-seeking  ▒ compression-seeking"
    panel = [line for line in text.splitlines()[:-1] if "┤" in line or line.startswith("    │")]
    marks = {m: [i for line in panel for i, c in enumerate(line) if c == m] for m in "·░▒"}
    assert all(len(columns) > 20 for columns in marks.values())
    # Warmup (to step 64) left of entropy-seeking (to 4000) left of compression-seeking.
    assert max(marks["·"]) < min(marks["░"]) and max(marks["░"]) < min(marks["▒"])
    bare = io.StringIO()
    plot(two_models, "pythia-410m", "rankme", terminal=True, stream=bare, size=(90, 14), shade_phases=False)
    assert not set("·░▒") & set(bare.getvalue()) and "phases:" not in bare.getvalue()


def _nan_series(wh, values):
    from test_warehouse import checkpoint_rows

    for step, value in enumerate(values):
        wh.write(checkpoint_rows(checkpoint=f"step{step}", step=step, metrics={"rankme": value, "alpha_req": 0.5}))


def test_an_all_nan_series_is_nothing_to_plot_not_twelve_points(wh, cli, tmp_path):
    # issue 18: `plot` of an all-NaN series reported "12 points" and drew an empty panel
    _nan_series(wh, [float("nan")] * 12)
    with pytest.raises(InputError, match="all 12 value.s. of rankme are NaN"):
        plot(wh, "m", "rankme", out=tmp_path / "fig.png")
    result = cli(["plot", "--model", "m", "--metric", "rankme", "--out", tmp_path / "fig.png", "--db", wh.path])
    assert result.exit_code == 1 and "are NaN" in result.output and not (tmp_path / "fig.png").exists()


def test_nan_values_are_left_out_of_the_points_and_said(wh, tmp_path):
    _nan_series(wh, [3.0, float("nan"), 2.5, 2.0])
    events = []
    points = plot(wh, "m", "rankme", out=tmp_path / "fig.png", progress=events.append)
    assert points["step"].to_list() == [0, 2, 3]
    assert any("1 NaN or infinite value(s) are not drawn (rankme)" in e.text for e in events if e.kind == "note")
