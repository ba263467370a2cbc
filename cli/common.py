"""The Typer app and what its commands share: options, rendering, error handling."""

from __future__ import annotations

import errno
import json
import math
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from click.exceptions import Abort, ClickException, Exit
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from geowh import __version__
from geowh.errors import GeowhError, OutputError
from geowh.outputs import output_path
from geowh.signals import handle_signals, interrupted_by

if TYPE_CHECKING:
    import polars as pl

# The machine, not geowh: what happened and what to do, by errno.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "free some space, then run this again",
    errno.EDQUOT: "free some space (the disk quota is used up), then run this again",
    errno.EROFS: "the file system is read-only: choose a path on a writable one",
    errno.EACCES: "fix the permissions, or choose another path",
    errno.EPERM: "fix the permissions, or choose another path",
    errno.ENAMETOOLONG: "shorten the name (at most 255 bytes per file or folder name)",
}

# Commands whose finished work survives a Ctrl-C (each checkpoint, step or file is committed as
# it completes) and which resume when run again; any other command stopped has written nothing.
_RESUMING = {"ingest", "memorize", "watch", "train-mini", "posttrain", "demo"}


class _Group(TyperGroup):
    """Turns a GeowhError anywhere below into one line on stderr and exit code 1, and Ctrl-C or
    SIGTERM into one line and exit code 130 or 143."""

    def invoke(self, ctx: Any) -> Any:
        with handle_signals():
            try:
                return super().invoke(ctx)
            except GeowhError as e:
                err_console().print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except (ClickException, Exit, Abort):
                raise
            except OSError as e:
                # The machine, not geowh: a full disk, a read-only or forbidden path. Anything else
                # is a bug and keeps its traceback.
                if e.errno not in _ENVIRONMENT_ERRNOS:
                    raise
                where = f" ({e.filename})" if e.filename else ""
                err_console().print(f"[bold red]error:[/] {escape((e.strerror or str(e)) + where)}: {_ENVIRONMENT_ERRNOS[e.errno]}",
                                    highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            except (KeyboardInterrupt, Exception) as e:
                stop = interrupted_by(e)
                if stop is None:
                    raise
                # A library may have wrapped the KeyboardInterrupt (DuckDB does): the signal decides.
                detail = getattr(e, "detail", None) or (
                    "what had finished is stored; run the command again to resume"
                    if ctx.invoked_subcommand in _RESUMING else "it did not finish and left nothing half-written; run it again"
                )
                err_console().print(f"[bold red]stopped[/] by {stop}: {escape(detail)}", highlight=False, soft_wrap=True)
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
Force = Annotated[bool, typer.Option("--force", help="Replace output files that already exist.")]


Ray = Annotated[
    str | None,
    typer.Option(
        "--ray", metavar="[ADDRESS]",
        help="Run the checkpoints as Ray tasks: local (a private Ray on this machine), auto (the cluster `ray start` "
        "runs here), HOST:PORT or ray://HOST:PORT. Alone: $RAY_ADDRESS, else local. Needs the ray extra: pip install 'geowh\\[ray]'.",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option("--workers", help="With --ray: checkpoints at once (default: the GPUs / --gpus-per-worker, or one per 4 CPUs)."),
]
GpusPerWorker = Annotated[
    float | None,
    typer.Option("--gpus-per-worker", help="With --ray: GPUs per checkpoint; 0.5 puts two on a GPU (default 1 with GPUs, else 0)."),
]


def executor_of(ray: str | None, workers: int | None, gpus_per_worker: float | None):
    """The engine's executor for --ray (a context manager), or a null context giving None (serial)."""
    from contextlib import nullcontext

    from geowh.errors import InputError

    if ray is None:
        if workers is not None or gpus_per_worker is not None:
            raise InputError("--workers and --gpus-per-worker go with --ray: add --ray (local, auto or an address)")
        return nullcontext(None)
    from geowh.ingest.engine.cluster import RayExecutor

    return RayExecutor(ray or None, workers, gpus_per_worker)


def bare_options(argv: list[str], options: Sequence[str] = ("--ray",)) -> list[str]:
    """`--ray` may stand alone; Typer's options all take a value, so a bare one is given an empty one."""
    out = list(argv)
    for i, arg in enumerate(argv):
        if arg in options and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out[i] = f"{arg}="
    return out


class Format(str, Enum):  # noqa: UP042 -- StrEnum would change str(member), which typer and callers may show
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


OUT_SUFFIXES = {".parquet": "Parquet", ".csv": "CSV", ".json": "JSON", "": "--format (CSV unless json)"}
"""What `--out` writes, by the file's suffix; any other suffix is refused rather than written as CSV."""


def check_sql_out(out: Path, fmt: Format | None = None) -> None:
    """Refuse an --out whose suffix names a format geowh does not write (`x.xlsx` would get CSV),
    or one that an explicit --format contradicts (`--format json --out x.csv` wrote JSON)."""
    suffix = out.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise OutputError(f"--out {out}: geowh writes .parquet, .csv or .json, not {out.suffix}: "
                          "choose one of those suffixes")
    if fmt is not None and fmt is not Format.table and suffix and suffix != f".{fmt.value}":
        raise OutputError(f"--format {fmt.value} and --out {out} disagree: the suffix decides what is written, "
                          "so leave out --format or give the file a matching suffix")


def screenful() -> int:
    """How many rows of a table fit the terminal (at least 20): more would scroll past unread."""
    return max(20, console().height - 8)


def render_frame(frame: pl.DataFrame, fmt: Format = Format.table, out: Path | None = None,
                 title: str | None = None, force: bool = False, protect: Sequence[Path] = (),
                 optional: Sequence[str] = (),
                 limit: int | None = None) -> None:
    """Show a polars DataFrame as a rich table, CSV or JSON, or write it to `out`.

    A table fits the terminal: `optional` columns, least important first, are left out when
    it is too narrow (named on stderr). With `limit`, a table shows only its first `limit` rows
    and says on stderr how many were left out (CSV, JSON and `out` always hold every row).

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
        # A rich table costs ~100 µs a row: past a screenful only the head is drawn, so a
        # million-row result answers as fast as its data, not in minutes.
        shown = frame if limit is None or frame.height <= limit else frame.head(limit)
        table, hidden = fit_table(shown, title, console().width, optional)
        console().print(table)
        if hidden:
            err_console().print(f"[dim]not shown at this width: {', '.join(hidden)} (--json shows all)[/]",
                                highlight=False)
        if frame.height == 0:
            err_console().print("(no rows)")
        elif shown.height < frame.height:
            err_console().print(f"first {shown.height:,} of {frame.height:,} rows shown ({frame.height - shown.height:,} "
                                "left out): --format csv, --format json or --out FILE give them all", highlight=False,
                                soft_wrap=True)


def fit_table(
    frame: pl.DataFrame, title: str | None, width: int, optional: Sequence[str] = ()
) -> tuple[RenderableType, list[str]]:
    """`frame` as a rich Table no wider than `width`, and the `optional` columns left out to fit.

    Numbers and names (values without spaces) keep their whole width, since a cut name ("entropy…")
    is unreadable; headers wrap at their spaces and prose wraps at words. `optional` columns, least
    important first, are left out while the table is still too wide. Rows too wide for any table
    (`sql "select * …"`) are shown one block per row, a column per line, as psql's expanded mode.
    """
    # (name, cells, numeric, fixed width or None for prose, natural width)
    columns: list[tuple[str, list[str], bool, int | None, int]] = []
    for name in frame.columns:
        cells = [cell(v) for v in frame[name].to_list()]
        numeric = frame[name].dtype.is_numeric()
        prose = not numeric and any(" " in text for text in cells)
        # Markup such as [dim]null[/] counts by what it shows.
        shown = [Text.from_markup(text).cell_len for text in cells]
        whole = max([*shown, *(len(word) for word in name.split())])
        columns.append((name, cells, numeric, None if prose else whole, max([*shown, len(name)])))

    # one space of padding each side and a border after each column
    def needed(cols: Sequence[tuple[str, list[str], bool, int | None, int]]) -> int:
        return sum((fixed or min(natural, 12)) + 3 for _, _, _, fixed, natural in cols) + 1

    hidden = []
    for name in optional:
        if needed(columns) <= width:
            break
        if name in frame.columns:
            columns = [c for c in columns if c[0] != name]
            hidden.append(name)
    if needed(columns) > width:
        blocks: list[RenderableType] = [Text(title, justify="center", style="italic")] if title else []
        for i, row in enumerate(zip(*(cells for _, cells, _, _, _ in columns))):
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold", no_wrap=True)
            grid.add_column(overflow="fold")
            for (name, *_), value in zip(columns, row):
                grid.add_row(name, value)
            blocks += [Rule(f"row {i + 1}", align="left", style="dim"), grid]
        return Group(*blocks), hidden
    table = Table(title=title, show_lines=False, header_style="bold")
    for name, _, numeric, fixed, _ in columns:
        # A fixed width keeps rich from cutting the column to fit; should even the rest not
        # fit, its values fold onto a second line rather than lose their end.
        table.add_column(name, justify="right" if numeric else "left", overflow="fold", width=fixed)
    for row in zip(*(cells for _, cells, _, _, _ in columns)):
        table.add_row(*row)
    return table, hidden


def flat_frame(frame: pl.DataFrame) -> pl.DataFrame:
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
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return number(value)
    return str(value)


def number(value: float) -> str:
    """A number as a person reads it in a table: 0.1042, 512, 143000, 2.1M, 300B.

    Whole numbers below a million stay exact (steps, counts); larger ones, and any fraction
    from 10 000 up, are cut to three significant digits with a k/M/B/T suffix.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    size = abs(value)
    whole = isinstance(value, int) or value.is_integer()
    if whole and size < (1_000_000 if isinstance(value, int) else 10_000):
        return str(int(value))
    if size < 9999.5:  # what .4g prints without an exponent
        return f"{value:.4g}"
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):  # noqa: B007 -- used after the break
        if size >= scale * 0.9995:  # 999.6k reads 1M
            break
    text = f"{value / scale:.3g}"
    return (text if "e" not in text else f"{value / scale:.0f}") + suffix


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
