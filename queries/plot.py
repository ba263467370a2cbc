"""`geowh plot`: trajectories on a log training-time axis, phases shaded, several models overlaid.

The x axis is `symlog` with a linear part below 1 step (below the first checkpoint's tokens for
`--x tokens`), so step 0 is drawn where it is and steps ≥ 1 are logarithmic. One panel per
metric, and one for the eval series if asked. With one model, its phases are shaded across the
panels; with several, each model's phases are a thin band at the bottom of each panel in the
phase's colour. `terminal=True` draws the same series and shading with plotext (x = log10(step + 1)).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import polars as pl

from geowh.errors import GeowhError, InputError
from geowh.outputs import check_output, output_path
from geowh.queries.correlate import Series, series_values
from geowh.queries.phases import phases as find_phases
from geowh.queries.series import Note, check_axis, load_series, models_arg, pick_series
from geowh.warehouse import Warehouse

# Image formats `--out` may name (by its extension); matplotlib writes each without extra packages.
FORMATS = ("png", "pdf", "svg")

PHASE_COLOURS = {
    "warmup": "#bbbbbb", "entropy-seeking": "#9ecae1", "compression-seeking": "#fdae6b", "flat": "#eeeeee",
}


def plot_frame(
    wh: Warehouse,
    models: str | Sequence[str],
    metrics: str | Sequence[str] = ("rankme", "alpha_req"),
    evals: str | Sequence[str] = (),
    x: str = "step",
    probe: str | None = None,
    layer: int | None = None,
    note: Note = None,
) -> pl.DataFrame:
    """The points a plot draws: model, series, stage, step, tokens, value (long)."""
    check_axis(x)
    metrics = _names(metrics)
    evals = [e if e.startswith("eval:") else f"eval:{e}" for e in _names(evals)]
    if not metrics and not evals:
        raise InputError("nothing to plot: pass --metric rankme,alpha_req and/or --eval sciq/acc")
    parts = []
    for model in models_arg(models):
        if metrics:
            pick = pick_series(wh, model, metrics, probe, layer, None, note)
            wide = load_series(wh, pick, metrics)
            for m in metrics:
                parts.append(wide.select(pl.lit(model).alias("model"), pl.lit(m).alias("series"),
                                         pl.col("stage").fill_null("pretrain"), "step", "tokens",
                                         pl.col(m).cast(pl.Float64).alias("value")))
        for e in evals:
            try:
                values = series_values(wh, model, Series.parse(e), note=note)
            except InputError as error:
                if len(models_arg(models)) == 1:
                    raise
                if note is not None:
                    note(f"{model}: {e} not drawn ({error})")
                continue
            tokens = wh.query("SELECT step, tokens FROM checkpoints WHERE model = ? AND step IS NOT NULL", [model])
            values = values.join(tokens.unique("step"), on="step", how="left")
            parts.append(values.select(pl.lit(model).alias("model"), pl.lit(e).alias("series"), "stage", "step",
                                       pl.col("tokens").cast(pl.Float64), "value"))
    frame = pl.concat(parts, how="vertical_relaxed").filter(pl.col("value").is_not_null())
    # NaN is a value to polars but no point to a plot: an all-NaN series was "12 points" of nothing
    nan = frame.filter(~pl.col("value").is_finite())
    frame = frame.filter(pl.col("value").is_finite())
    if frame.height == 0 and nan.height:
        raise InputError(f"nothing to plot: all {nan.height} value(s) of {', '.join(sorted(set(nan['series'])))} are NaN "
                         "or infinite (`geowh metrics` and the runs' errors say why)")
    if nan.height and note is not None:
        note(f"{nan.height} NaN or infinite value(s) are not drawn ({', '.join(sorted(set(nan['series'])))})")
    unknown = frame[x].null_count()
    frame = frame.filter(pl.col(x).is_not_null())
    if frame.height == 0:
        raise InputError(f"nothing to plot: no point has its {x} recorded" + ("; use --x step" if x == "tokens" else ""))
    if unknown and note is not None:
        note(f"{unknown} point(s) without a recorded {x} are not drawn")
    return frame


def plot(
    wh: Warehouse,
    models: str | Sequence[str],
    metrics: str | Sequence[str] = ("rankme", "alpha_req"),
    evals: str | Sequence[str] = (),
    x: str = "step",
    out: str | Path | None = None,
    terminal: bool = False,
    probe: str | None = None,
    layer: int | None = None,
    shade_phases: bool = True,
    stream: TextIO | None = None,
    size: tuple[int, int] | None = None,
    note: Note = None,
    force: bool = False,
) -> pl.DataFrame:
    """Draw trajectories to an image (`out`: .png, .pdf or .svg) or the terminal; returns the points drawn.

    `out` is written whole or not at all; an existing file is replaced only with `force`.
    """
    if out is None and not terminal:
        raise InputError("say where to draw: --out fig.png or --terminal")
    if out is not None:
        out = Path(out)
        if out.suffix.lower().lstrip(".") not in FORMATS:
            raise InputError(
                f"--out {out}: cannot draw a {out.suffix or 'file without an extension'}; "
                f"name a {', '.join('.' + f for f in FORMATS)} file"
            )
        check_output(out, force=force, protect=[wh.path])
    frame = plot_frame(wh, models, metrics, evals, x, probe, layer, note)
    names = models_arg(models)
    spans = _phase_spans(wh, names, x, probe, layer, note) if shade_phases and _names(metrics) else {}
    if terminal:
        _terminal(frame, spans, x, stream or sys.stdout, size)
    if out is not None:
        with output_path(out, force=force, protect=[wh.path]) as tmp:
            _image(frame, spans, x, tmp, out.suffix.lower().lstrip("."))
    return frame


def _phase_spans(wh: Warehouse, models: list[str], x: str, probe, layer, note: Note) -> dict[str, pl.DataFrame]:
    """Each model's phases (computed, not stored); a model whose phases cannot be found is drawn unshaded."""
    spans = {}
    for model in models:
        try:
            found = find_phases(wh, model, probe=probe, layer=layer, x=x, store=False)
        except GeowhError as e:
            if note is not None:
                note(f"{model}: phases not shaded ({e})")
            continue
        spans[model] = found.filter(pl.col("stage") == "pretrain")
    return spans


def _image(frame: pl.DataFrame, spans: dict[str, pl.DataFrame], x: str, out: Path, fmt: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    series = frame["series"].unique(maintain_order=True).to_list()
    models = frame["model"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(series), 1, sharex=True, figsize=(8, 2.6 * len(series) + 0.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    positive = frame.filter(pl.col(x) > 0)[x]
    linthresh = 1.0 if x == "step" else float(positive.min() if positive.len() else 1.0)
    for ax, name in zip(axes[:, 0], series):
        for i, model in enumerate(models):
            part = frame.filter((pl.col("model") == model) & (pl.col("series") == name)).sort(x)
            ax.plot(part[x].to_numpy(), part["value"].to_numpy(), marker=".", markersize=3, linewidth=1.2,
                    color=colours[i % len(colours)], label=model)
            if model in spans:
                band = (0.0, 1.0) if len(models) == 1 else (i * 0.04, (i + 1) * 0.04)
                for row in spans[model].iter_rows(named=True):
                    start, end = row[f"start_{x}"], row[f"end_{x}"]
                    if start is not None and end is not None:
                        ax.axvspan(start, end, ymin=band[0], ymax=band[1], color=PHASE_COLOURS.get(row["phase"], "#eeeeee"),
                                   alpha=0.45 if len(models) == 1 else 0.9, linewidth=0)
        ax.set_ylabel(name.removeprefix("eval:"))
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.grid(True, which="major", alpha=0.3)
    axes[-1, 0].set_xlabel(f"{x} (symlog: linear below {linthresh:g}, logarithmic above)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    shown = {row["phase"] for s in spans.values() for row in s.iter_rows(named=True)}
    handles += [Patch(color=c, alpha=0.6, label=p) for p, c in PHASE_COLOURS.items() if p in shown]
    axes[0, 0].legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120, format=fmt)
    finally:
        plt.close(fig)


# Without colour (a pipe, a file) the phases still read by their fill character.
PHASE_MARKS = {"warmup": "·", "entropy-seeking": "░", "compression-seeking": "▒", "flat": "˙"}


def _terminal(frame: pl.DataFrame, spans: dict[str, pl.DataFrame], x: str, stream: TextIO,
              size: tuple[int, int] | None) -> None:
    """One plotext panel per series, built one after the other (x = log10(step + 1), real steps as ticks).

    Phases are shaded as in the image: across the panel for one model, a thin band at the bottom
    per model for several; each phase in its colour and fill character, keyed below the panels.
    """
    import plotext as plt

    width, height = size or (100, 16)  # per panel
    offset = 1.0 if x == "step" else _first_positive(frame[x])
    ticks = [0, 10, 100, 1_000, 10_000, 100_000, 1_000_000] if x == "step" else [offset * 10**k for k in range(7)]
    top = float(np.log10(frame[x].max() + offset))
    shown = [v for v in ticks if np.log10(v + offset) <= top + 0.3]
    colourless = not (hasattr(stream, "isatty") and stream.isatty())
    fig = plt.figure
    panels = []
    named: set[str] = set()
    for name in frame["series"].unique(maintain_order=True).to_list():
        fig.clear()
        fig.plot_size(width, height)
        fig.title(name.removeprefix("eval:"))
        part = frame.filter(pl.col("series") == name)
        models = part["model"].unique(maintain_order=True).to_list()
        low, high = float(part["value"].min()), float(part["value"].max())
        row = (high - low) / max(height - 4, 1) or 1.0  # the value one text row spans
        for i, model in enumerate(models):
            band = (low, high) if len(models) == 1 else (low + i * row, low + (i + 1) * row)
            for phase in spans.get(model, pl.DataFrame()).iter_rows(named=True):
                start, end = phase[f"start_{x}"], phase[f"end_{x}"]
                if start is None or end is None:
                    continue
                fig.draw(_shade(fig, plt, np.log10(start + offset), np.log10(end + offset), band, phase["phase"],
                                top, width))
                named.add(phase["phase"])
        for model in models:
            points = part.filter(pl.col("model") == model).sort(x)
            t = np.log10(points[x].to_numpy().astype(float) + offset)  # step 0 sits at 0
            signal = fig.signal(t.tolist(), points["value"].to_list())
            signal.label(model)
            signal.lines(True)
            fig.draw(signal)
        fig.ruler("x").ticks([float(np.log10(v + offset)) for v in shown], [f"{v:.3g}" for v in shown])
        fig.label(f"{x} (log axis of {x} + {offset:g})", axis="x")
        panels.append(fig.build().string(colorless=colourless).rstrip("\n"))
    fig.clear()
    if named:  # the key goes below the panels: in a panel's legend it would hide the models on short panels
        panels.append("phases: " + "  ".join(
            _mark(plt, phase).string(colorless=colourless) + " " + phase for phase in PHASE_MARKS if phase in named))
    stream.write("\n".join(panels) + "\n")


def _shade(fig, plt, start: float, end: float, band: tuple[float, float], phase: str, top: float, width: int):
    """A filled span from `start` to `end` (log axis) over the values `band`: points two per text column, filled down."""
    mark = _mark(plt, phase)
    count = max(2, int(np.ceil(2 * width * (end - start) / max(top, 1e-9))))
    xs = np.linspace(start, end, count).tolist()
    upper = fig.signal(xs, [band[1]] * count, marker=mark)
    return upper.fill(fig.signal(xs, [band[0]] * count, marker=mark)).density("full", scope="fill")


def _mark(plt, phase: str):
    """The phase's fill character in its PNG colour."""
    colour = tuple(int(PHASE_COLOURS.get(phase, "#eeeeee")[i:i + 2], 16) for i in (1, 3, 5))
    return plt.colorize(PHASE_MARKS.get(phase, "·"), (colour,))


def _first_positive(values: pl.Series) -> float:
    positive = values.filter(values > 0)
    return float(positive.min()) if positive.len() else 1.0


def _names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v and v.strip()]
