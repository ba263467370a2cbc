"""The Typer app and what its commands share: options, rendering, error handling."""

from __future__ import annotations

import errno
import json
import math
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from geowh import __version__
from geowh.errors import GeowhError, OutputError
from geowh.outputs import output_path


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class _Group(TyperGroup):
    """Turns a GeowhError anywhere below into one line on stderr and exit code 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except GeowhError as e:
            err_console().print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as e:
            # The machine, not geowh: a full disk, a read-only or forbidden path. Anything else
            # is a bug and keeps its traceback.
            if e.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f" ({e.filename})" if e.filename else ""
            err_console().print(f"[bold red]error:[/] {e.strerror}{where}: free space or fix the path, then run this again",
                                highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

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
Force = Annotated[bool, typer.Option("--force", help="Replace output files that already exist.")]


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def strict(value: Any) -> Any:
    """`value` with every NaN and ±inf replaced by None, so that it encodes as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Strict JSON (null, never NaN or Infinity): what every --json and .json output prints."""
    return json.dumps(strict(value), indent=2, default=str, allow_nan=False) + "\n"


def print_json(value: Any) -> None:
    """JSON on stdout, untouched by rich so that it pipes into jq."""
    sys.stdout.write(to_json(value))


def render_frame(frame, fmt: Format = Format.table, out: Optional[Path] = None, title: str | None = None,
                 force: bool = False, protect: Sequence[Path] = ()) -> None:
    """Show a polars DataFrame as a rich table, CSV or JSON, or write it to `out`.

    `out` is written as a whole or not at all, never over an existing file unless `force`,
    never over a path in `protect` (the warehouse).
    """
    if out is not None:
        import polars as pl

        suffix = out.suffix.lower()
        with output_path(out, force=force, protect=protect) as tmp:
            try:
                if suffix == ".parquet":
                    frame.write_parquet(tmp)
                elif suffix == ".json" or fmt is Format.json:
                    tmp.write_text(to_json(frame.to_dicts()))
                else:
                    flat_frame(frame).write_csv(tmp)
            except pl.exceptions.PolarsError as e:  # polars wraps I/O errors (a full disk) in its own
                raise OutputError(f"cannot write {out}: {str(e).splitlines()[0]}") from None
        err_console().print(f"wrote {frame.height} rows to {out}")
        return
    if fmt is Format.csv:
        sys.stdout.write(flat_frame(frame).write_csv())
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


def flat_frame(frame):
    """`frame` with its nested columns (lists, structs) JSON-encoded, as CSV needs one value per cell."""
    import polars as pl

    nested = [name for name, dtype in frame.schema.items() if dtype.is_nested()]
    return frame.with_columns(
        pl.Series(name, [None if v is None else json.dumps(strict(v), default=str) for v in frame[name].to_list()],
                  dtype=pl.String)
        for name in nested
    )


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
