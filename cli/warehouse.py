"""Commands over the warehouse file: sql, info, export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geowh.cli.common import DEFAULT_DB, Db, Format, Json, app, console, print_json, render_frame


@app.command()
def sql(
    statement: Annotated[str, typer.Argument(help="A read-only SQL statement.")],
    db: Db = DEFAULT_DB,
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write to FILE (.parquet, .csv or .json).")] = None,
) -> None:
    """Run read-only SQL over the warehouse.

    Example: geowh sql "select step, rankme, alpha_req from trajectories where model = 'pythia-410m'"
    """
    from geowh.warehouse import Warehouse

    render_frame(Warehouse(db).sql(statement), format, out)


@app.command()
def info(db: Db = DEFAULT_DB, json_: Json = False) -> None:
    """What the warehouse holds: models, checkpoints, probes and row counts.

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
    render_frame(pl.DataFrame(summary["models"]), title="models")
    render_frame(pl.DataFrame(summary["probes"]), title="probes")
    render_frame(pl.DataFrame({"table": list(summary["tables"]), "rows": list(summary["tables"].values())}), title="tables")


@app.command()
def export(
    directory: Annotated[Path, typer.Argument(help="Folder to write one Parquet file per table into.")],
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Export every table (and the trajectories view) as Parquet.

    Example: geowh export ./parquet/
    """
    from geowh.warehouse import Warehouse

    written = Warehouse(db).export(directory)
    if json_:
        print_json([str(p) for p in written])
    else:
        for path in written:
            console().print(str(path))


