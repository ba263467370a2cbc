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
from typing import TextIO, cast

import numpy as np
import polars as pl

from geowh.errors import GeowhError, InputError
from geowh.outputs import check_output, output_path
from geowh.progress import Event, Progress, silent
from geowh.queries.correlate import Series, series_values
from geowh.queries.phases import phases as find_phases
from geowh.queries.series import (
    FLOPS_PER_PARAM_TOKEN,
    baseline_of,
    check_axis,
    load_series,
    models_arg,
    pick_series,
    require_axis,
)
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
    progress: Progress = silent,
) -> pl.DataFrame:
    """The points a plot draws: model, series, stage, step, tokens, value (long)."""
    check_axis(x)
    metrics = _names(metrics)
    evals = [e if e.startswith("eval:") else f"eval:{e}" for e in _names(evals)]
    if not metrics and not evals:
        raise InputError("nothing to plot: pass --metric rankme,alpha_req and/or --eval sciq/acc")
    parts = []
    for model in models_arg(models):
        require_axis(wh, model, x)
        if metrics:
            pick = pick_series(wh, model, metrics, probe, layer, None, progress)
            wide = load_series(wh, pick, metrics)
            for m in metrics:
                parts.append(wide.select(pl.lit(model).alias("model"), pl.lit(m).alias("series"),
                                         pl.col("stage").fill_null("pretrain"), "step", "tokens", "flops",
                                         pl.col(m).cast(pl.Float64).alias("value")))
        for e in evals:
            try:
                values = series_values(wh, model, Series.parse(e), progress=progress)
            except InputError as error:
                if len(models_arg(models)) == 1:
                    raise
                progress(Event("note", f"{model}: {e} not drawn ({error})"))
                continue
            tokens = wh.query(
                f"SELECT c.step, c.tokens, {FLOPS_PER_PARAM_TOKEN}.0 * m.parameters * c.tokens AS flops FROM checkpoints c "
                "LEFT JOIN models m USING (model) WHERE c.model = ? AND c.step IS NOT NULL", [model])
            values = values.join(tokens.unique("step"), on="step", how="left")
            parts.append(values.select(pl.lit(model).alias("model"), pl.lit(e).alias("series"), "stage", "step",
                                       pl.col("tokens").cast(pl.Float64), pl.col("flops").cast(pl.Float64), "value"))
    frame = pl.concat(parts, how="vertical_relaxed").filter(pl.col("value").is_not_null())
    # NaN is a value to polars but no point to a plot: an all-NaN series was "12 points" of nothing
    nan = frame.filter(~pl.col("value").is_finite())
    frame = frame.filter(pl.col("value").is_finite())
    if frame.height == 0 and nan.height:
        raise InputError(f"nothing to plot: all {nan.height} value(s) of {', '.join(sorted(set(nan['series'])))} are NaN "
                         "or infinite (`geowh metrics` and the runs' errors say why)")
    if nan.height:
        progress(Event("note", f"{nan.height} NaN or infinite value(s) are not drawn ({', '.join(sorted(set(nan['series'])))})"))
    unknown = frame[x].null_count()
    frame = frame.filter(pl.col(x).is_not_null())
    if frame.height == 0:
        raise InputError(f"nothing to plot: no point has its {x} recorded" + ("; use --x step" if x == "tokens" else ""))
    if unknown:
        progress(Event("note", f"{unknown} point(s) without a recorded {x} are not drawn"))
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
    progress: Progress = silent,
    force: bool = False,
    layers: str | Sequence[int] | None = None,
    baseline: bool = False,
) -> pl.DataFrame:
    """Draw trajectories to an image (`out`: .png, .pdf or .svg) or the terminal; returns the points drawn.

    `layers="all"` (or a list) draws instead, per model and metric, the layer × checkpoint
    heatmap with each layer's phase boundaries marked (`phase_map`, computed, not stored).
    `baseline` adds, per model, the metric of isotropic random features of the same n and d
    (dashed). `out` is written whole or not at all; an existing file is replaced only with `force`.
    """
    if layers is not None:
        return plot_layers(wh, models, metrics, x, Path(out) if out is not None else None, terminal, probe, layers, stream, size, progress, force)
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
    frame = plot_frame(wh, models, metrics, evals, x, probe, layer, progress)
    names = models_arg(models)
    spans = _phase_spans(wh, names, x, probe, layer, progress) if shade_phases and _names(metrics) else {}
    refs = _baselines(wh, names, _names(metrics), probe, layer, progress) if baseline else {}
    if terminal:
        _terminal(frame, spans, x, stream or sys.stdout, size, refs)
    if out is not None:
        with output_path(out, force=force, protect=[wh.path]) as tmp:
            _image(frame, spans, x, tmp, out.suffix.lower().lstrip("."), refs)
    return frame


def _baselines(wh: Warehouse, models: list[str], metrics: list[str], probe, layer, progress: Progress) -> dict[tuple[str, str], float]:
    """{(model, metric): value of the isotropic baseline at the model's n and d}."""
    refs = {}
    for model in models:
        pick = pick_series(wh, model, metrics, probe, layer)
        found = baseline_of(wh, pick, metrics)
        if found is None:
            progress(Event("note", f"{model}: no spectrum stored, so no isotropic baseline (it needs n and d)"))
            continue
        refs.update({(model, m): found[m] for m in metrics if m in found and np.isfinite(found[m])})
    return refs


def _phase_spans(wh: Warehouse, models: list[str], x: str, probe, layer, progress: Progress) -> dict[str, pl.DataFrame]:
    """Each model's phases (computed, not stored); a model whose phases cannot be found is drawn unshaded."""
    spans = {}
    for model in models:
        try:
            found = find_phases(wh, model, probe=probe, layer=layer, x=x, store=False)
        except GeowhError as e:
            progress(Event("note", f"{model}: phases not shaded ({e})"))
            continue
        spans[model] = found.filter(pl.col("stage") == "pretrain")
    return spans


def _image(frame: pl.DataFrame, spans: dict[str, pl.DataFrame], x: str, out: Path, fmt: str,
           refs: dict[tuple[str, str], float] | None = None) -> None:
    refs = refs or {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    series = frame["series"].unique(maintain_order=True).to_list()
    models = frame["model"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(series), 1, sharex=True, figsize=(8, 2.6 * len(series) + 0.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    positive = frame.filter(pl.col(x) > 0)[x]
    linthresh = 1.0 if x == "step" else (float(cast(float, positive.min())) if positive.len() else 1.0)
    for ax, name in zip(axes[:, 0], series):
        for i, model in enumerate(models):
            part = frame.filter((pl.col("model") == model) & (pl.col("series") == name)).sort(x)
            ax.plot(part[x].to_numpy(), part["value"].to_numpy(), marker=".", markersize=3, linewidth=1.2,
                    color=colours[i % len(colours)], label=model)
            if (model, name) in refs:
                ax.axhline(refs[(model, name)], linestyle="--", linewidth=0.9, color=colours[i % len(colours)],
                           label=f"{model}: isotropic random, same n, d ({refs[(model, name)]:.4g})")
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
    if refs and not any("isotropic" in label for label in labels):  # the first panel may have no baseline (an eval)
        handles += [h for ax in axes[1:, 0] for h, lab in zip(*ax.get_legend_handles_labels()) if "isotropic" in lab][:len(models)]
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
              size: tuple[int, int] | None, refs: dict[tuple[str, str], float] | None = None) -> None:
    """One plotext panel per series, built one after the other (x = log10(step + 1), real steps as ticks).

    Phases are shaded as in the image: across the panel for one model, a thin band at the bottom
    per model for several; each phase in its colour and fill character, keyed below the panels.
    """
    import plotext as plt

    width, height = size or (100, 16)  # per panel
    offset = 1.0 if x == "step" else _first_positive(frame[x])
    ticks = [0, 10, 100, 1_000, 10_000, 100_000, 1_000_000] if x == "step" else [offset * 10**k for k in range(7)]
    top = float(np.log10(cast(float, frame[x].max()) + offset))
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
        low, high = float(cast(float, part["value"].min())), float(cast(float, part["value"].max()))
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
            if refs and (model, name) in refs:  # the isotropic baseline: a dotted line across the panel
                ref = fig.signal([0.0, top], [refs[(model, name)]] * 2, marker="dot")
                ref.label(f"{model} isotropic")
                ref.lines(True)
                fig.draw(ref)
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
    return float(cast(float, positive.min())) if positive.len() else 1.0


def _names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v and v.strip()]


# -- layer × checkpoint heatmaps ------------------------------------------------------------------

# From low to high: the terminal heatmap's cells, and the mark of a phase boundary.
SHADES = " ░▒▓█"
BOUNDARY = "┃"


def layer_frame(wh: Warehouse, model: str, metrics: Sequence[str], probe: str | None = None,
                layers: str | Sequence[int] = "all", progress: Progress = silent) -> pl.DataFrame:
    """layer, checkpoint, step, tokens, flops, metric, value of every layer of one model's probe
    and pooling (picked as for phases), in training order."""
    pick = pick_series(wh, model, metrics, probe, None, None)
    frame = wh.query(
        f"""
        SELECT m.layer, m.checkpoint, c.step, c.tokens, {FLOPS_PER_PARAM_TOKEN}.0 * mo.parameters * c.tokens AS flops,
               m.metric, m.value, coalesce(c.stage_order, 0) AS stage_order
        FROM metrics m JOIN checkpoints c USING (model, checkpoint) LEFT JOIN models mo USING (model)
        WHERE m.model = ? AND m.probe IS NOT DISTINCT FROM ? AND m.pooling IS NOT DISTINCT FROM ?
          AND m.layer IS NOT NULL AND m.index_dir IS NULL AND m.metric IN ({', '.join('?' * len(metrics))})
        ORDER BY stage_order, c.step, m.checkpoint, m.layer
        """,
        [pick.model, pick.probe, pick.pooling, *metrics],
    )
    if layers != "all":
        wanted = [int(v) for v in (layers.split(",") if isinstance(layers, str) else layers)]
        frame = frame.filter(pl.col("layer").is_in(wanted))
    if frame["layer"].n_unique() < 2:
        raise InputError(f"{pick.model} has {frame['layer'].n_unique()} layer(s) with {', '.join(metrics)} for probe "
                         f"{pick.probe}: a layer heatmap needs several (ingest with --layers all)")
    return frame


def plot_layers(wh: Warehouse, models: str | Sequence[str], metrics: str | Sequence[str], x: str,
                out: Path | None, terminal: bool, probe: str | None, layers: str | Sequence[int],
                stream: TextIO | None, size: tuple[int, int] | None, progress: Progress, force: bool) -> pl.DataFrame:
    """The layer × checkpoint heatmap of each model and metric, each layer's phase boundaries marked."""
    from geowh.queries.phases import phase_map

    check_axis(x)
    metrics = _names(metrics) or ["rankme", "alpha_req"]
    panels = []
    for model in models_arg(models):
        require_axis(wh, model, x)
        frame = layer_frame(wh, model, metrics, probe, layers, progress)
        try:
            found = phase_map(wh, model, probe, None, layers, x=x, store=False)
            bounds = {layer: part[f"start_{x}"].to_list()[1:] for (layer,), part in found.group_by(["layer"])}
        except GeowhError as e:
            progress(Event("note", f"{model}: phase boundaries not marked ({e})"))
            bounds = {}
        for m in metrics:
            part = frame.filter(pl.col("metric") == m)
            if part.height:
                panels.append((model, m, part, bounds))
    if not panels:
        raise InputError(f"none of {', '.join(metrics)} is stored per layer")
    if terminal:
        (stream or sys.stdout).write("\n\n".join(_text_heatmap(*p, x, (size or (100, 16))[0]) for p in panels) + "\n")
    if out is not None:
        with output_path(out, force=force, protect=[wh.path]) as tmp:
            _heatmap_image(panels, x, tmp, out.suffix.lower().lstrip("."))
    return pl.concat([p[2].with_columns(pl.lit(p[0]).alias("model")) for p in panels], how="vertical_relaxed")


def _grid(part: pl.DataFrame, x: str) -> tuple[list[int], list, np.ndarray]:
    """Layers (ascending), x values of the checkpoints (training order) and values (layer, checkpoint)."""
    order = part.select("checkpoint", x).unique("checkpoint", maintain_order=True)
    layers = sorted(part["layer"].unique().to_list())
    wide = part.pivot(on="layer", index="checkpoint", values="value", aggregate_function="first")
    wide = order.join(wide, on="checkpoint", how="left")
    values = np.array([wide[str(layer)].cast(pl.Float64).fill_null(np.nan).to_numpy() for layer in layers])
    return layers, order[x].to_list(), values


def _heatmap_image(panels, x: str, out: Path, fmt: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.4 * len(panels) + 0.6), squeeze=False)
    for ax, (model, metric, part, bounds) in zip(axes[:, 0], panels):
        layers, xs, values = _grid(part, x)
        image = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                          extent=(-0.5, len(xs) - 0.5, layers[0] - 0.5, layers[-1] + 0.5))
        fig.colorbar(image, ax=ax, label=metric, pad=0.01)
        for layer in layers:
            for b in bounds.get(layer, []):
                if b in xs:  # the boundary sits on the first checkpoint of the next phase
                    k = xs.index(b) - 0.5
                    ax.plot([k, k], [layer - 0.5, layer + 0.5], color="white", linewidth=2.5)
                    ax.plot([k, k], [layer - 0.5, layer + 0.5], color="black", linewidth=1)
        ticks = np.unique(np.linspace(0, len(xs) - 1, min(len(xs), 10)).round().astype(int))
        ax.set_xticks(ticks, [_short(xs[i]) for i in ticks], fontsize=8)
        ax.set_yticks(layers if len(layers) <= 16 else layers[:: max(1, len(layers) // 12)])
        ax.set_ylabel("layer")
        ax.set_title(f"{model}: {metric} per layer (lines: phase boundaries)", fontsize=10)
    axes[-1, 0].set_xlabel(f"{x} (one column per checkpoint)")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120, format=fmt)
    finally:
        plt.close(fig)


def _text_heatmap(model: str, metric: str, part: pl.DataFrame, bounds: dict, x: str, width: int) -> str:
    """One character per checkpoint (SHADES from the lowest value to the highest), a row per layer
    (top layer first), BOUNDARY where a layer's next phase starts."""
    layers, xs, values = _grid(part, x)
    cols = min(len(xs), max(10, width - 12))
    take = np.unique(np.linspace(0, len(xs) - 1, cols).round().astype(int))  # checkpoints shown
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lines = [f"{model}: {metric} per layer ({SHADES[1]} low … {SHADES[-1]} high: {low:.4g} … {high:.4g}; "
             f"{BOUNDARY} phase boundary)"]
    for r in range(len(layers) - 1, -1, -1):
        starts = {min(range(len(take)), key=lambda j: abs(take[j] - xs.index(b))) for b in bounds.get(layers[r], []) if b in xs}
        row = []
        for j, k in enumerate(take):
            v = values[r, k]
            if j in starts:
                row.append(BOUNDARY)
            elif not np.isfinite(v):
                row.append(" ")
            else:
                level = 0 if high == low else (v - low) / (high - low)
                row.append(SHADES[1 + min(int(level * (len(SHADES) - 1)), len(SHADES) - 2)])
        lines.append(f"{layers[r]:>5} │" + "".join(row))
    first, last = _short(xs[take[0]]), _short(xs[take[-1]])
    lines.append(" " * 7 + first + " " * max(1, len(take) - len(first) - len(last)) + last)
    lines.append(" " * 7 + f"{x}, one column per checkpoint")
    return "\n".join(lines)


def _short(v) -> str:
    if v is None:
        return "?"
    v = float(v)
    for suffix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.4g}"
