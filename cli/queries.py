"""Commands that bring numbers in and analyse them: import-evals, import-metrics, phases, correlate, plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from geowh.cli.common import DEFAULT_DB, Db, Force, Json, app, err_console, print_json, render_frame


def _given(**options) -> dict:
    """The options given on the command line: one not given leaves the library's default in place."""
    return {k: v for k, v in options.items() if v is not None}


def _note(message: str) -> None:
    err_console().print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


Probe = Annotated[Optional[str], typer.Option(help="Probe id (default: the model's probe with the most checkpoints).")]
Layer = Annotated[Optional[int], typer.Option(help="Layer, hidden_states index (default: the last).")]
XAxis = Annotated[str, typer.Option("--x", help="Training-time axis, logarithmic: step or tokens.")]


@app.command("import-evals")
def import_evals(
    paths: Annotated[list[Path], typer.Argument(help="lm-evaluation-harness results files or folders (walked).")],
    model: Annotated[Optional[str], typer.Option(help="Model name, when model_args does not give it.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Checkpoint label, when model_args names no revision.")] = None,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Import lm-evaluation-harness results (old and current layouts) into the evals table.

    Example: geowh import-evals ../shared/data/pythia-evals
    """
    from geowh.queries import import_evals as run
    from geowh.warehouse import Warehouse

    summary = run(Warehouse(db), paths, model=model, checkpoint=checkpoint)
    if json_:
        print_json(summary.to_dicts())
    else:
        render_frame(summary.rename({"num_fewshot": "shots", "checkpoints": "check points"}), title="imported evals",
                     optional=["files", "unchanged"])


@app.command("import-metrics")
def import_metrics(
    file: Annotated[Path, typer.Argument(help="CSV, TSV or Parquet: long (model, step, metric, value) or wide.")],
    model: Annotated[Optional[str], typer.Option(help="Model name for every row (when the file has no model column).")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite values an ingest measured (refused otherwise).")] = False,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Import trajectories computed elsewhere into the metrics table (never over measured values unless --replace).

    Example: geowh import-metrics old_runs.csv
    """
    from geowh.queries import import_metrics as run
    from geowh.warehouse import Warehouse

    summary = run(Warehouse(db), file, model=model, replace=replace)
    if json_:
        print_json(summary.to_dicts())
    else:
        render_frame(summary, title="imported metrics")


@app.command()
def phases(
    model: Annotated[str, typer.Option(help="Model name (aliases such as olmo-7b work).")],
    probe: Probe = None,
    layer: Layer = None,
    pooling: Annotated[Optional[str], typer.Option(help="Pooling: last or mean (default: last).")] = None,
    metric: Annotated[Optional[str], typer.Option(help="Signal to segment: rankme, alpha_req or both (default: both).")] = None,
    x: XAxis = "step",
    store: Annotated[bool, typer.Option("--store/--no-store", help="Store the phases in the warehouse (--no-store only reads).")] = True,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Segment a trajectory into warmup, entropy-seeking and compression-seeking phases (stored in `phases`).

    Example: geowh phases --model olmo-7b --metric both --json
    """
    from geowh.queries import phases as run
    from geowh.warehouse import Warehouse

    found = run(Warehouse(db), model, probe=probe, layer=layer, pooling=pooling, x=x, store=store, note=_note,
                **_given(metric=metric))
    if json_:
        print_json([{**row, "evidence": json.loads(row["evidence"])} for row in found.to_dicts()])
    else:
        import polars as pl

        first = found.row(0, named=True)
        # A series without a probe (toy, imported metrics) has none to name.
        where = " ".join(f"{k}={first[k]}" for k in ("probe", "layer", "pooling") if first[k] is not None)
        shown = {"phase_index": "#", "phase": "phase", "stage": "stage", f"start_{x}": f"start {x}",
                 f"end_{x}": f"end {x}", "delta_rankme": "Δ rankme", "delta_alpha_req": "Δ αReQ"}
        if found["matches_paper"].is_not_null().any():
            shown["matches_paper"] = "as paper"
        render_frame(found.select(pl.col(k).alias(v) for k, v in shown.items()),
                     title=f"{first['model']}  {where + ' ' if where else ''}basis={first['basis']}",
                     optional=["stage", "#"])


@app.command()
def correlate(
    model: Annotated[str, typer.Option(help="Model(s), comma-separated: pythia-410m,pythia-1b.")],
    x: Annotated[str, typer.Option("--x", help="Series: a metric name (alpha_req) or eval:TASK/METRIC.")],
    y: Annotated[str, typer.Option("--y", help="Series: a metric name or eval:TASK/METRIC (eval:sciq/acc).")],
    method: Annotated[Optional[str], typer.Option(help="spearman, pearson or kendall (default: spearman).")] = None,
    join: Annotated[Optional[str], typer.Option(help="exact (same step) or nearest (nearest log step); default: exact.")] = None,
    probe: Probe = None,
    layer: Layer = None,
    fewshot: Annotated[Optional[int], typer.Option(help="Few-shot count of eval series (default: 0, or the only one).")] = None,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Correlate two series across each model's checkpoints (rho, p-value, n), as the paper's Table 9.

    Example: geowh correlate --model pythia-410m,pythia-1b --x alpha_req --y eval:sciq/acc
    """
    from geowh.queries import correlate as run
    from geowh.warehouse import Warehouse

    found = run(Warehouse(db), model, x, y, probe=probe, layer=layer, fewshot=fewshot, note=_note,
                **_given(method=method, join=join))
    if json_:
        print_json(found.drop("join").to_dicts())
    else:
        render_frame(found.rename({"p_value": "p value"}), title=f"{found['method'].first() or ''} correlation", optional=["method", "join"])


@app.command()
def plot(
    model: Annotated[str, typer.Option(help="Model(s), comma-separated; several are overlaid.")],
    metric: Annotated[Optional[str], typer.Option(help="Metrics, comma-separated (default: rankme,alpha_req).")] = None,
    eval_: Annotated[Optional[str], typer.Option("--eval", help="Eval series TASK/METRIC, comma-separated (sciq/acc).")] = None,
    x: XAxis = "step",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Image file to write: .png, .pdf or .svg.")] = None,
    terminal: Annotated[bool, typer.Option("--terminal", help="Draw in the terminal (plotext) instead.")] = False,
    probe: Probe = None,
    layer: Layer = None,
    force: Force = False,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Plot trajectories on a log step axis with the phases shaded; several models overlaid.

    Example: geowh plot --model pythia-410m,pythia-1b --metric rankme,alpha_req --eval sciq/acc --out fig.png
    """
    from geowh.queries import plot as run
    from geowh.warehouse import Warehouse

    points = run(Warehouse(db), model, evals=eval_ or (), **_given(metrics=metric), x=x, out=None if terminal else out, terminal=terminal,
                 probe=probe, layer=layer, note=_note, force=force)
    if json_:
        print_json({"out": None if terminal else str(out), "points": points.height})
    elif out is not None and not terminal:
        err_console().print(f"wrote {out} ({points.height} points)")
