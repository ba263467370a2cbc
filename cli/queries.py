"""Commands that bring numbers in and analyse them: import-evals, import-metrics, phases, correlate, plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from geowh.cli.common import DEFAULT_DB, Db, Force, Json, app, err_console, print_json, render_frame
from geowh.cli.progress import Renderer
from geowh.errors import InputError
from geowh.progress import Event

# The claims' task defaults: the names `geowh posttrain` gives its tasks (queries/claims.py).
_CLAIMS_IN, _CLAIMS_OOD, _CLAIMS_REWARD = "copy", "phrase", "copy"

Probe = Annotated[str | None, typer.Option(help="Probe id (default: the model's probe with the most checkpoints).")]
Layer = Annotated[int | None, typer.Option(help="Layer, hidden_states index (default: the last).")]
XAxis = Annotated[str, typer.Option("--x", help="Training-time axis, logarithmic: step, tokens or flops (6 · parameters · tokens).")]


@app.command("import-evals")
def import_evals(
    paths: Annotated[list[Path], typer.Argument(help="lm-evaluation-harness results files or folders (walked).")],
    model: Annotated[str | None, typer.Option(help="Model name, when model_args does not give it.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Checkpoint label, when model_args names no revision.")] = None,
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
    model: Annotated[str | None, typer.Option(help="Model name for every row (when the file has no model column).")] = None,
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
    pooling: Annotated[str | None, typer.Option(help="Pooling: last or mean (default: last).")] = None,
    metric: Annotated[str, typer.Option(help="Signal to segment: rankme, alpha_req or both.")] = "both",
    x: XAxis = "step",
    layers: Annotated[str | None, typer.Option(help="Phase map: segment every layer (all) or these (0,6,12); one row per layer.")] = None,
    store: Annotated[bool, typer.Option("--store/--no-store", help="Store the phases in the warehouse (--no-store only reads).")] = True,
    in_task: Annotated[str, typer.Option(help="Post-training claims: the in-distribution task (evals.task).")] = _CLAIMS_IN,
    ood_task: Annotated[str, typer.Option(help="Post-training claims: the out-of-distribution task.")] = _CLAIMS_OOD,
    reward_task: Annotated[str, typer.Option(help="Post-training claims: RLVR's reward task (pass@k, distinct-n).")] = _CLAIMS_REWARD,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Segment a trajectory into warmup, entropy-seeking and compression-seeking phases (stored in `phases`).

    On a series with post-training stages (sft, dpo, rlvr: tulu-3-8b, a `geowh posttrain` folder)
    it also shows each stage's change of behaviour (evals rows: accuracy, pass@K, distinct-n,
    entropy) and the paper's claims checked: ✓, ✗, not significant or untested, with the numbers
    and the test (docs/posttrain.md). With --json, each stage's row carries `behaviour` and `claims`.

    Example: geowh phases --model olmo-7b --metric both --json;  geowh phases --model olmo-7b --layers all
    """
    from geowh.queries import phase_map
    from geowh.queries.claims import claims
    from geowh.queries.phases import phases as run
    from geowh.warehouse import Warehouse

    if layers is not None:
        if layer is not None:
            raise InputError("pass --layer L (one trajectory) or --layers all (a phase map), not both")
        found = phase_map(Warehouse(db), model, probe=probe, pooling=pooling, layers=layers, metric=metric, x=x,
                          store=store, progress=Renderer())
    else:
        found = run(Warehouse(db), model, probe=probe, layer=layer, pooling=pooling, metric=metric, x=x, store=store,
                    progress=Renderer())
    post = layers is None and found["stage"].is_in(["sft", "dpo", "rlvr"]).any()  # else nothing to check
    stages = claims(Warehouse(db), found["model"][0], found, in_task=in_task, ood_task=ood_task,
                    reward_task=reward_task) if post else []
    if json_:
        checked = {s.stage: s for s in stages}
        print_json([{**row, "evidence": json.loads(row["evidence"]),
                     **({"behaviour": checked[row["stage"]].behaviour, "claims": checked[row["stage"]].claims}
                        if row["stage"] in checked else {})} for row in found.to_dicts()])
        return
    if layers is not None:
        render_frame(_phase_map_rows(found, x), title=f"{found['model'][0]}  phase map  basis={metric}  x={x}")
    else:
        import polars as pl

        first = found.row(0, named=True)
        # A series without a probe (toy, imported metrics) has none to name.
        where = " ".join(f"{k}={first[k]}" for k in ("probe", "layer", "pooling") if first[k] is not None)
        shown = {"phase_index": "#", "phase": "phase", "stage": "stage", f"start_{x}": f"start {x}",
                 f"end_{x}": f"end {x}", "delta_rankme": "Δ rankme", "delta_alpha_req": "Δ αReQ"}
        if found["matches_paper"].is_not_null().any():
            shown["matches_paper"] = "as paper"
        flagged = [json.loads(e).get("alpha_req_fits_flagged", 0) for e in found["evidence"]]
        table = found.select(pl.col(k).alias(v) for k, v in shown.items())
        if any(flagged):  # αReQ values from short or poor fits (docs/metrics.md#fit-diagnostics)
            table = table.with_columns(pl.Series("flagged fits", flagged))
        render_frame(table, title=f"{first['model']}  {where + ' ' if where else ''}basis={metric}",
                     optional=["stage", "#", "flagged fits"])
        if stages:
            _render_claims(stages)


def _render_claims(stages) -> None:
    """Each post-training stage's change of behaviour, then the paper's claims with their verdicts."""
    import polars as pl

    from geowh.queries.claims import ALPHA, TEST, claims_table

    behaviour = [{"stage": s.stage, **b} for s in stages for b in s.behaviour]
    if behaviour:
        render_frame(pl.DataFrame(behaviour).select(
            "stage", "task", "metric", pl.col("start_checkpoint").alias("from"), pl.col("end_checkpoint").alias("to"),
            pl.col("start").round(4), pl.col("end").round(4), pl.col("change").round(4)),
            title="behaviour over each post-training stage (evals rows)", optional=["from", "to"])
    else:
        Renderer()(Event("note", "no evals rows of this series: measure behaviour with geowh ingest RUN --generate TASK.jsonl"))
    rows = [{"stage": r["stage"], "claim": r["claim"], "verdict": r["verdict"], "task": r.get("task"),
             "metric": r.get("metric"), "observed": _observed(r), "z": r.get("z"), "p": r.get("p")}
            for r in claims_table(stages)]
    render_frame(pl.DataFrame(rows, schema={"stage": pl.String, "claim": pl.String, "verdict": pl.String,
                                            "task": pl.String, "metric": pl.String, "observed": pl.String,
                                            "z": pl.Float64, "p": pl.Float64}),
                 title="the paper's post-training claims", optional=["task", "z"])
    err_console().print(f"behaviour: {TEST}, α = {ALPHA}; geometry: the stage's phase label", highlight=False)


def _observed(row: dict) -> str:
    if "observed" in row:
        return str(row["observed"])
    if row.get("start") is None:
        return row.get("why", "")
    return f"{row['start']:.4g} → {row['end']:.4g} ({row['change']:+.4g})"


def _phase_map_rows(found, x: str):
    """One row per layer: its phases in order and the boundaries between them on the x axis."""
    import polars as pl

    from geowh.cli.common import number

    rows = []
    for (layer,), part in found.group_by(["layer"], maintain_order=True):
        ends = part[f"end_{x}"].to_list()[:-1]
        flagged = sum(json.loads(e).get("alpha_req_fits_flagged", 0) for e in part["evidence"].to_list())
        rows.append({"layer": layer, "phases": " → ".join(part["phase"].to_list()),
                     f"boundaries ({x})": ", ".join(number(v) for v in ends if v is not None) or "–", "flagged fits": flagged})
    return pl.DataFrame(rows)


@app.command()
def correlate(
    model: Annotated[str, typer.Option(help="Model(s), comma-separated: pythia-410m,pythia-1b.")],
    x: Annotated[str, typer.Option("--x", help="Series: a metric name (alpha_req) or eval:TASK/METRIC.")],
    y: Annotated[str, typer.Option("--y", help="Series: a metric name or eval:TASK/METRIC (eval:sciq/acc).")],
    method: Annotated[str, typer.Option(help="spearman, pearson or kendall.")] = "spearman",
    join: Annotated[str, typer.Option(help="exact (same step) or nearest (nearest on the log --axis).")] = "exact",
    axis: Annotated[str, typer.Option(help="Axis --join nearest pairs on: step, tokens or flops (--x names a series here).")] = "step",
    probe: Probe = None,
    layer: Layer = None,
    fewshot: Annotated[int | None, typer.Option(help="Few-shot count of eval series (default: 0, or the only one).")] = None,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Correlate two series across each model's checkpoints (rho, p-value, n), as the paper's Table 9.

    Example: geowh correlate --model pythia-410m,pythia-1b --x alpha_req --y eval:sciq/acc
    """
    from geowh.queries.correlate import correlate as run
    from geowh.warehouse import Warehouse

    found = run(Warehouse(db), model, x, y, method=method, join=join, probe=probe, layer=layer, fewshot=fewshot,
                progress=Renderer(), axis=axis)
    if json_:
        print_json(found.drop("join").to_dicts())
    else:
        render_frame(found.rename({"p_value": "p value"}), title=f"{method} correlation", optional=["method", "join"])


@app.command()
def plot(
    model: Annotated[str, typer.Option(help="Model(s), comma-separated; several are overlaid.")],
    metric: Annotated[str, typer.Option(help="Metrics, comma-separated.")] = "rankme,alpha_req",
    eval_: Annotated[str | None, typer.Option("--eval", help="Eval series TASK/METRIC, comma-separated (sciq/acc).")] = None,
    x: XAxis = "step",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Image file to write: .png, .pdf or .svg.")] = None,
    terminal: Annotated[bool, typer.Option("--terminal", help="Draw in the terminal (plotext) instead.")] = False,
    probe: Probe = None,
    layer: Layer = None,
    layers: Annotated[str | None, typer.Option(help="Draw the layer × checkpoint heatmap of every layer (all) or these (0,6,12), phase boundaries marked.")] = None,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also draw isotropic random features of the same n and d (dashed).")] = False,
    force: Force = False,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Plot trajectories on a log step axis with the phases shaded; several models overlaid.

    Example: geowh plot --model pythia-410m,pythia-1b --metric rankme,alpha_req --eval sciq/acc --out fig.png
    """
    from geowh.queries.plot import plot as run
    from geowh.warehouse import Warehouse

    points = run(Warehouse(db), model, metric, eval_ or (), x=x, out=None if terminal else out, terminal=terminal,
                 probe=probe, layer=layer, progress=Renderer(), force=force, layers=layers, baseline=baseline)
    if json_:
        print_json({"out": None if terminal else str(out), "points": points.height})
    elif out is not None and not terminal:
        err_console().print(f"wrote {out} ({points.height} points)")


@app.command()
def report(
    model: Annotated[str | None, typer.Option(help="Model(s), comma-separated (default: every model with metrics or evals).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (self-contained: opens offline).")] = Path("report.html"),
    metric: Annotated[str, typer.Option(help="Trajectory panels, comma-separated metric names.")] = "rankme,alpha_req",
    force: Force = False,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Write one interactive HTML report: trajectories, spectra, per-layer heatmaps, evals, phases, provenance.

    Example: geowh report --model pythia-410m,pythia-1b --out report.html
    """
    from geowh.queries.report import report as run
    from geowh.warehouse import Warehouse

    summary = run(Warehouse(db), out, models=model, metrics=metric, force=force, progress=Renderer())
    if json_:
        print_json(summary.to_dict())
    else:
        err_console().print(f"wrote {out} ({summary.bytes / 1e6:.1f} MB: {len(summary.models)} model(s), "
                            f"{summary.checkpoints} checkpoints, {len(summary.charts)} charts)")
