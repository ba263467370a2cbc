"""The Typer app and what its commands share: options, rendering, error handling."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from click.exceptions import Abort, ClickException, Exit
from typer.core import TyperGroup

from geowh import __version__
from geowh.errors import GeowhError
from geowh.signals import handle_signals, interrupted_by


class _Group(TyperGroup):
    """Turns a GeowhError anywhere below into one line on stderr and exit code 1, and Ctrl-C or
    SIGTERM into one line and exit code 130 or 143."""

    def invoke(self, ctx: Any) -> Any:
        with handle_signals():
            try:
                return super().invoke(ctx)
            except GeowhError as e:
                err_console().print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except (ClickException, Exit, Abort):
                raise
            except (KeyboardInterrupt, Exception) as e:
                stop = interrupted_by(e)
                if stop is None:
                    raise
                # A library may have wrapped the KeyboardInterrupt (DuckDB does): the signal decides.
                detail = getattr(e, "detail", None) or "what had finished is stored; run the command again to resume"
                err_console().print(f"[bold red]stopped[/] by {stop}: {detail}", highlight=False, soft_wrap=True)
                raise typer.Exit(stop.exit_code) from None

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # in the order they are declared, which follows the flow


app = typer.Typer(
    cls=_Group,
    help="geowh: a representation-geometry warehouse for language-model training dynamics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def console() -> Console:
    return Console()


def err_console() -> Console:
    return Console(stderr=True)


# -- shared options ----------------------------------------------------------------------------

Db = Annotated[
    Path,
    typer.Option("--db", envvar="GEOWH_DB", help="Warehouse file (env GEOWH_DB).", show_default=True),
]
DEFAULT_DB = Path("geowh.duckdb")
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def print_json(value: Any) -> None:
    """JSON on stdout, untouched by rich so that it pipes into jq."""
    sys.stdout.write(json.dumps(value, indent=2, default=str, allow_nan=True) + "\n")


def render_frame(frame, fmt: Format = Format.table, out: Optional[Path] = None, title: str | None = None) -> None:
    """Show a polars DataFrame as a rich table, CSV or JSON, or write it to `out`."""
    if out is not None:
        suffix = out.suffix.lower()
        if suffix == ".parquet":
            frame.write_parquet(out)
        elif suffix == ".json" or fmt is Format.json:
            out.write_text(json.dumps(frame.to_dicts(), indent=2, default=str) + "\n")
        else:
            frame.write_csv(out)
        err_console().print(f"wrote {frame.height} rows to {out}")
        return
    if fmt is Format.csv:
        sys.stdout.write(frame.write_csv())
    elif fmt is Format.json:
        print_json(frame.to_dicts())
    else:
        table = Table(title=title, show_lines=False, header_style="bold")
        for name in frame.columns:
            numeric = frame[name].dtype.is_numeric()
            table.add_column(name, justify="right" if numeric else "left")
        for row in frame.iter_rows():
            table.add_row(*(cell(v) for v in row))
        console().print(table)
        if frame.height == 0:
            err_console().print("(no rows)")


def cell(value: Any) -> str:
    if value is None:
        return "[dim]null[/]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geowh {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """geowh: a representation-geometry warehouse for language-model training dynamics.

    Ingest checkpoint series into DuckDB, then query, segment and plot their RankMe and αReQ
    trajectories.
    """
