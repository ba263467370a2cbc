"""Commands over the warehouse file: sql, info, export, migrate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geowh.cli.common import (
    DEFAULT_DB,
    Db,
    Force,
    Format,
    Json,
    app,
    check_sql_out,
    console,
    err_console,
    print_json,
    render_frame,
    screenful,
)

SQL_TIMEOUT = 60.0
"""Seconds an interactive `geowh sql` may run: longer than any query of a warehouse's size, short
enough that a mistaken cross join does not hold the file for an ingest."""


@app.command(context_settings={"ignore_unknown_options": True})
def sql(
    statement: Annotated[str, typer.Argument(help="A read-only SQL statement.")],
    db: Annotated[
        Path | None,
        typer.Option("--db", envvar="GEOWH_DB", show_default=False,
                     help=f"Warehouse file (env GEOWH_DB; default {DEFAULT_DB}, or an empty warehouse if that is missing)."),
    ] = None,
    read: Annotated[
        list[Path] | None,
        typer.Option("--read", help="A file or folder of your own (Parquet, CSV) the SQL may read; repeatable."),
    ] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to FILE (.parquet, .csv or .json).")] = None,
    force: Force = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", show_default=False,
                     help=f"Stop the query after SECONDS (0: no limit; default {SQL_TIMEOUT:g} s, none with --out)."),
    ] = None,
) -> None:
    """Run read-only SQL over the warehouse, in DuckDB's sandbox: no file is written or read but --read ones.

    Ctrl-C, SIGTERM or --timeout stop a running query; beyond a screenful a table shows the first
    rows (--format csv, json or --out give them all).

    Example: geowh sql "select step, rankme, alpha_req from trajectories where model = 'pythia-410m'"
    """
    from geowh.outputs import check_output
    from geowh.warehouse import Warehouse

    wh = Warehouse(db or DEFAULT_DB)
    if out is not None:  # a bad --out is refused before the query runs, not after
        check_output(out, force=force, protect=[wh.path])
        check_sql_out(out, format)
    if timeout is None:  # an interactive query gets a limit; a query written to a file is a job
        timeout = 0 if out is not None else SQL_TIMEOUT
    frame = wh.sql(statement, read=read or (), missing_ok=db is None, timeout=timeout)
    render_frame(frame, format, out, force=force, protect=[wh.path], limit=None if out else screenful())


@app.command()
def info(db: Db = DEFAULT_DB, json_: Json = False) -> None:
    """What the warehouse holds: models, checkpoints, probes, row counts, and metric rows made by older definitions.

    Example: geowh info --json
    """
    import polars as pl

    from geowh.warehouse import Warehouse

    summary = Warehouse(db).info()
    if json_:
        print_json(summary)
        return
    console().print(
        f"[bold]{summary['path']}[/]  schema v{summary['schema_version']}  "
        f"{summary['bytes'] / 1e6:.1f} MB  failed runs: {summary['failed_runs']}  "
        f"interrupted: {summary['interrupted_runs']}  running: {summary['running_runs']}"
    )
    models = pl.DataFrame(summary["models"])  # spaced headers wrap, so the model names keep their width
    render_frame(models.rename(lambda c: c.replace("_", " ").replace("checkpoints", "check points")), title="models")
    render_frame(pl.DataFrame(summary["probes"]), title="probes")
    render_frame(pl.DataFrame({"table": list(summary["tables"]), "rows": list(summary["tables"].values())}), title="tables")
    if summary["stale_metrics"]:
        render_frame(pl.DataFrame(summary["stale_metrics"]), title="metric rows made by older definitions")
        console().print(
            "refresh them from the stored spectra with `geowh recompute --model MODEL --metric METRIC`, or ingest "
            "again with the same options (finished checkpoints are measured again when a definition changed)",
            highlight=False,
        )


@app.command()
def export(
    # a str, not a Path: Path('') is '.', and an empty name must not mean the current folder
    directory: Annotated[str, typer.Argument(help="Folder to write one Parquet file per table into.")],
    db: Db = DEFAULT_DB,
    force: Force = False,
    json_: Json = False,
) -> None:
    """Export every table (and the trajectories view) as Parquet.

    Example: geowh export ./parquet/
    """
    from geowh.warehouse import Warehouse

    written = Warehouse(db).export(directory, force=force)
    if json_:
        print_json([str(p) for p in written])
    else:
        for path in written:
            console().print(str(path))


@app.command()
def migrate(db: Db = DEFAULT_DB, json_: Json = False) -> None:
    """Upgrade a warehouse written by an older geowh to this version's schema (reading commands never do).

    Example: geowh migrate --db old.duckdb
    """
    from geowh.warehouse import Warehouse

    wh = Warehouse(db)
    before, after = wh.migrate()
    if json_:
        print_json({"path": str(wh.path), "from_version": before, "to_version": after})
    elif before == after:
        err_console().print(f"{wh.path} is already at schema version {after}: nothing to do")
    else:
        console().print(f"{wh.path}: schema version {before} → {after}")
