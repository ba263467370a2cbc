"""`geowh demo`: train a mini Pythia, index its corpus, ingest it with memorization, show the phases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from geowh.cli.common import DEFAULT_DB, Db, Json, app, console, err_console, print_json, render_frame
from geowh.cli.progress import Renderer
from geowh.repro.demo import DemoConfig

_D = DemoConfig()


@app.command()
def demo(
    out: Annotated[
        Path | None,
        typer.Argument(help="Run folder (checkpoints, index, QA task, plots). Default: $GEOWH_HOME/demo."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default 1000: the same run on every machine).")
    ] = _D.steps,
    minutes: Annotated[
        float | None,
        typer.Option(help="Plan the steps from this wall-clock budget instead (the run then depends on the machine)."),
    ] = _D.minutes,
    long: Annotated[
        bool, typer.Option("--long", help="Train the longer run of docs/train-mini.md (2 layers, d = 32, 8,000 steps).")
    ] = False,
    shipped: Annotated[
        bool, typer.Option("--shipped", help="Train nothing: load the --long run's measured trajectory into --db.")
    ] = False,
    post_training: Annotated[
        bool, typer.Option("--post-training", help="Then SFT → DPO → RLVR from its last checkpoint, ingest them with "
                           "geometry and generation, and check the paper's post-training claims (docs/posttrain.md).")
    ] = False,
    memorization: Annotated[
        bool, typer.Option("--memorization", help="Plant facts of known frequency in the corpus and test the "
                                                  "memorization claim on them (docs/memorization.md); with "
                                                  "--long: on L1's 8,000-step run (three phases); with "
                                                  "--shipped: load the measured trajectory.")
    ] = False,
    n: Annotated[int, typer.Option("--n", help="Probe sequences per checkpoint (held-out documents).")] = _D.n,
    qa_items: Annotated[int, typer.Option(help="Most QA items derived from the corpus for memorization.")] = _D.qa_items,
    device: Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or cuda:N.")] = _D.device,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: the cores the load average leaves free).")
    ] = _D.threads,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Everything offline in one command: train-mini, ∞-gram index, QA task, ingest, phases, plots.

    Trains a small Pythia-architecture model on the docstrings of the installed Python code,
    indexes its training split with infini-gram, derives a QA task from the docstrings, ingests
    every checkpoint (geometry and memorization) into --db, prints the phase table and writes
    OUT/geometry.png and OUT/memorization.png. Rerunning continues where it stopped. The default
    run is 1,000 steps (time: README.md); --long is the run that shows the three phases, and
    --shipped loads its measured trajectory in seconds (docs/train-mini.md). --memorization plants
    facts of known frequency in the corpus and tests the memorization claim on them.

    Example: geowh demo runs/demo --db demo.duckdb
    """
    from geowh.errors import InputError
    from geowh.repro.demo import demo as run
    from geowh.repro.demo import load_shipped, long_run
    from geowh.settings import settings

    if memorization and post_training:
        raise InputError("--memorization and --post-training are two demos: run one at a time")
    if memorization:
        from geowh.cli import memorization_demo

        given = [option for option, value, default in (
            ("--minutes", minutes, _D.minutes), ("--qa-items", qa_items, _D.qa_items),
        ) if value != default]
        memorization_demo.run(out, db, steps=steps, long=long, shipped=shipped, given=given, n=n, device=device,
                              threads=threads, quiet=quiet, json_=json_)
        return
    if shipped:
        # It trains nothing, so a training option given with it would be silently ignored.
        given = [option for option, value, default in (
            ("OUT", out, None), ("--steps", steps, _D.steps), ("--minutes", minutes, _D.minutes), ("--long", long, False),
            ("--n", n, _D.n), ("--qa-items", qa_items, _D.qa_items), ("--device", device, _D.device),
            ("--threads", threads, _D.threads), ("--post-training", post_training, False),
        ) if value != default]
        if given:
            raise InputError(f"--shipped trains nothing and loads the measured --long run into --db: "
                             f"leave out {', '.join(given)}")
        _print_shipped(load_shipped(db), json_)
        return
    if post_training:
        _post_training(out, db, device, threads, quiet, json_,
                       given=[o for o, v, d in (("--long", long, False), ("--steps", steps, _D.steps),
                                                ("--minutes", minutes, _D.minutes)) if v != d])
        return
    config = None
    if long:
        if steps is not None or minutes is not None:
            raise InputError("--long trains a fixed run: leave out --steps and --minutes")
        config, steps = long_run()
    folder = out or settings().home / ("demo-long" if long else "demo")
    how = DemoConfig(minutes=minutes, steps=steps, train=config, n=n, qa_items=qa_items, device=device,
                     threads=threads)
    with Renderer(quiet=quiet or json_) as progress:
        summary = run(folder, db, how, progress=progress)
    if json_:
        print_json(summary.to_dict())
    else:
        import polars as pl

        from geowh.queries.phases import COLUMNS

        phase_table = pl.DataFrame(summary.phases, schema=COLUMNS).select(
            "phase", "stage", pl.col("start_step").alias("start step"), pl.col("end_step").alias("end step"),
            pl.col("delta_rankme").round(3).alias("Δ rankme"), pl.col("delta_alpha_req").round(3).alias("Δ αReQ"),
        )
        render_frame(phase_table, title=f"phases of {summary.model} (Δ: change of the fitted trajectory)")
        if summary.memorization_by_phase:
            render_frame(
                pl.DataFrame(summary.memorization_by_phase).rename({
                    "memorization_start": "ρ at start", "memorization_end": "ρ at end", "memorization_max": "ρ max",
                    "max_at_step": "max at step", "start_step": "start step", "end_step": "end step",
                }),
                title="memorization ρ (∞-gram vs model log-likelihood, Spearman) in each phase",
            )
        for name, path in summary.plots.items():
            console().print(f"{name} plot: {path}", highlight=False)
        err_console().print(
            f"{summary.seconds['total']:.0f} s; train {summary.train['status']}, index {summary.index['status']}, "
            f"task {summary.task['status']} ({summary.task['items']} items), {summary.ingest['ok']} checkpoints "
            f"ingested, {summary.ingest['skipped']} already done → {summary.db} (model {summary.model})",
            highlight=False,
        )
    if summary.ingest["failed"]:
        for entry in summary.ingest["errors"]:
            err_console().print(f"[red]failed[/] {entry['checkpoint']}: {escape(entry['error'])}", highlight=False)
        raise typer.Exit(1)


def _post_training(out: Path | None, db: Path, device: str, threads: int | None, quiet: bool, json_: bool,
                   given: list[str]) -> None:
    """`geowh demo --post-training`: geowh.repro.posttrain_demo, then the phases and the claims table."""
    from geowh.cli.queries import _render_claims
    from geowh.errors import InputError
    from geowh.queries.claims import StageClaims
    from geowh.repro.posttrain_demo import PostDemoConfig, posttrain_demo
    from geowh.settings import settings

    if given:  # the base is the demo's own run: another one would not be the demo's
        raise InputError(f"--post-training starts from the demo's run: leave out {', '.join(given)}")
    with Renderer(quiet=quiet or json_) as progress:
        summary = posttrain_demo(out or settings().home / "demo", db, PostDemoConfig(device=device, threads=threads),
                                 progress=progress)
    if json_:
        print_json(summary.to_dict())
        return
    import polars as pl

    from geowh.queries.phases import COLUMNS

    render_frame(pl.DataFrame(summary.phases, schema=COLUMNS).select(
        "phase", "stage", pl.col("start_step").alias("start step"), pl.col("end_step").alias("end step"),
        pl.col("delta_rankme").round(3).alias("Δ rankme"), pl.col("delta_alpha_req").round(3).alias("Δ αReQ"),
        pl.col("matches_paper").alias("as paper")), title=f"phases of {summary.model}")
    _render_claims([StageClaims(**s) for s in summary.claims])
    err_console().print(
        f"{summary.seconds['total']:.0f} s ({summary.cpu_seconds:.0f} CPU s, {summary.threads} thread(s)); base "
        f"{summary.base['status']}, posttrain {summary.posttrain['status']}, {summary.ingest['ok']} checkpoints "
        f"ingested, {summary.ingest['skipped']} already done → {summary.db} (model {summary.model})", highlight=False)


def _print_shipped(loaded: dict, json_: bool) -> None:
    if json_:
        print_json(loaded)
        return
    import polars as pl

    from geowh.queries.phases import COLUMNS

    render_frame(
        pl.DataFrame(loaded["phases"], schema=COLUMNS).select("phase", "start_step", "end_step", "delta_rankme",
                                                              "delta_alpha_req"),
        title=f"phases of {loaded['model']} (the measured trajectory of geowh demo --long)",
    )
    err_console().print(f"{loaded['imported']['status']}: {loaded['imported']['rows']} metric rows, "
                        f"{loaded['spectra']} spectra → model {loaded['model']}", highlight=False)
