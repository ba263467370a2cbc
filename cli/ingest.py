"""Commands that bring checkpoints in: ingest, checkpoints, models."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from geowh.cli.common import (
    DEFAULT_DB,
    Db,
    GpusPerWorker,
    Json,
    Ray,
    Workers,
    app,
    err_console,
    executor_of,
    print_json,
    render_frame,
)
from geowh.cli.progress import Renderer
from geowh.ingest.config import IngestConfig, Selection

Checkpoints = Annotated[
    str,
    typer.Option(
        "--checkpoints",
        help="Which checkpoints: all, a list (step1000,step2000 or 1000,2000 or 'stage1-*'), "
        "a step range START:END[:STRIDE], or log:N (N log-spaced).",
    ),
]
Revisions = Annotated[
    str | None, typer.Option("--revisions", help="hf: models: comma-separated revisions (default: all branches).")
]
Name = Annotated[str | None, typer.Option("--name", help="Model name in the warehouse (default: the folder's or registry name).")]


def _split(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def selection_of(checkpoints: str, revisions: str | None, name: str | None) -> Selection:
    from geowh.ingest.config import Selection

    listed = _split(revisions)
    return Selection(checkpoints=checkpoints, revisions=tuple(listed) if listed else None, name=name)


def config_of(options: dict):
    """The IngestConfig of the command's options (those that are its fields)."""
    from dataclasses import fields

    from geowh.ingest.config import IngestConfig

    given = {f.name: options[f.name] for f in fields(IngestConfig) if f.name in options}
    if given.get("save_features") is not None:
        given["save_features"] = str(given["save_features"])
    return IngestConfig(**given)


def ingest(
    model: Annotated[str, typer.Argument(help="Registry model (pythia-410m, olmo-7b, tulu-3-8b), hf:ORG/NAME, or a run folder.")],
    probe: Annotated[str, typer.Option(help="Probe set: fineweb, wikitext, or a .txt/.jsonl/.parquet file.")] = IngestConfig.probe,
    n: Annotated[int, typer.Option("--n", help="Probe sequences (all usable documents when fewer).")] = IngestConfig.n,
    max_len: Annotated[int, typer.Option(help="Truncate sequences to this many tokens.")] = IngestConfig.max_len,
    min_len: Annotated[int, typer.Option(help="Drop texts of this many tokens or fewer.")] = IngestConfig.min_len,
    seed: Annotated[int, typer.Option(help="Seed of the probe sample (and of --subsets).")] = IngestConfig.seed,
    checkpoints: Checkpoints = Selection.checkpoints,
    revisions: Revisions = None,
    name: Name = Selection.name,
    layers: Annotated[str, typer.Option(help="Layers: last, all, or hidden_states indices such as 0,6,12.")] = IngestConfig.layers,
    pooling: Annotated[str, typer.Option(help="Pooling: last (last real token), mean, or last,mean.")] = IngestConfig.pooling,
    subsets: Annotated[int, typer.Option(help="Also compute metrics on K disjoint probe parts: value = mean, stderr.")] = IngestConfig.subsets,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = IngestConfig.device,
    dtype: Annotated[str, typer.Option(help="auto (bf16 on a capable GPU, else fp32), float32, bfloat16, float16.")] = IngestConfig.dtype,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per batch (default: fit the device's memory).")] = IngestConfig.batch_size,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer (hub id or folder) for checkpoints saved without one.")] = IngestConfig.tokenizer,
    save_features: Annotated[
        Path | None, typer.Option(help="Also save each feature matrix as DIR/MODEL/CHECKPOINT/layerL-POOLING.npy.")
    ] = None,  # IngestConfig.save_features (a str there: config_of converts)
    loss: Annotated[
        bool, typer.Option("--loss", help="Also the probe's next-token loss (metric probe_loss; loads the LM head).")
    ] = IngestConfig.loss,
    force: Annotated[bool, typer.Option("--force", help="Recompute checkpoints already ingested with these settings.")] = False,
    evict: Annotated[bool, typer.Option("--evict", help="Delete each hub checkpoint from the HF cache once ingested.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    ray: Ray = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    db: Db = DEFAULT_DB,
    json_: Json = False,
    **measurement_options,
) -> None:
    """Ingest a checkpoint series: probe features → spectra and metrics in the warehouse.

    Resumable: checkpoints already ingested with the same settings are skipped. A checkpoint
    that fails is recorded (runs.status = failed) and the ingest goes on; the exit code is 1
    if any failed.

    With --ray the checkpoints run as tasks on a Ray cluster's GPUs (or CPUs); this process
    alone writes the warehouse (docs/scale.md).

    Example: geowh ingest pythia-410m --checkpoints log:30 --db w.duckdb
    """
    from geowh.ingest.engine.run import ingest as run_ingest

    config = config_of(locals())
    with executor_of(ray, workers, gpus_per_worker) as executor, Renderer(quiet=quiet or json_) as progress:
        summary = run_ingest(
            model, config, selection_of(checkpoints, revisions, name), force=force, evict=evict, db=db,
            progress=progress, options=measurement_options, executor=executor,
        )
    if json_:
        print_json(summary.to_dict())
    else:
        import polars as pl

        frame = pl.DataFrame(summary.checkpoints, infer_schema_length=None).drop("run_id")
        render_frame(frame.rename({"tokens_per_s": "tokens/s"}), title=f"{summary.model} × {summary.probe}",
                     optional=["tokens/s"])
        err_console().print(
            f"{summary.count('ok')} ok, {summary.count('skipped')} skipped (already done), "
            f"{summary.failed} failed → {summary.db}"
        )
        if summary.remeasured:
            err_console().print(
                f"measured again: {', '.join(summary.remeasured)}, whose stored metrics came from older metric "
                "definitions (docs/metrics.md)", highlight=False, soft_wrap=True,
            )
    if summary.failed:
        raise typer.Exit(1)


def with_measurement_options(command):
    """`command` with the options of the registry's measurements (ingest/measurements/) in place of its
    `**measurement_options`: `--memorization`, `--index`, … come from the measurements' modules."""
    from geowh.ingest.measurements import options

    signature = inspect.signature(command, eval_str=True)
    declared = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    added = [
        inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[o.type | None, typer.Option(o.flag, help=o.help)])
        for o in options()
    ]
    command.__signature__ = signature.replace(parameters=declared + added)
    return command


app.command()(with_measurement_options(ingest))


@app.command()
def checkpoints(
    model: Annotated[str, typer.Argument(help="Registry model, hf:ORG/NAME, or a run folder.")],
    select: Checkpoints = "all",
    revisions: Revisions = None,
    name: Name = None,
    json_: Json = False,
) -> None:
    """The checkpoints of a series (step, tokens, stage, revision), without downloading weights.

    Example: geowh checkpoints pythia-410m --checkpoints log:10 --json
    """
    import polars as pl

    from geowh.ingest.sources.series import resolve_series

    series = resolve_series(model, revisions=_split(revisions), name=name, checkpoints=select)
    rows = [r.describe() for r in series.checkpoints]
    if json_:
        print_json(rows)
        return
    frame = pl.DataFrame(rows, infer_schema_length=None)
    render_frame(frame.drop([c for c in frame.columns if frame[c].null_count() == frame.height]), title=series.model,
                 optional=["repo", "revision"])
    err_console().print(f"{len(rows)} checkpoints of {series.model} ({series.family})")


@app.command()
def models(json_: Json = False) -> None:
    """The model families geowh knows, with their model names.

    Example: geowh models --json
    """
    import polars as pl

    from geowh.ingest.sources.series import list_models

    families = list_models()
    if json_:
        print_json(families)
        return
    render_frame(
        pl.DataFrame(
            [f | {"models": ", ".join(f["models"]) or "(any)"} for f in families]
        ).select("family", "models", "description", "example")
    )
