"""The one renderer of the library's progress events (geowh/progress.py) on stderr.

`with Renderer(quiet=quiet) as progress: summary = library_call(..., progress=progress)`: each
event kind has its handler in `HANDLERS`. Lines (info, note, stage, a finished checkpoint) are
printed; a status is a spinner and counts are bars, each on one live display at a time (rich
allows one): a display that another kind needs is closed first, and an `info` or a `stage`
closes it, since they come between the steps of a job. Leave the block before printing results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from geowh.cli.common import err_console
from geowh.progress import Event

QUIET_KINDS = {"locked"}
"""What `quiet` still shows: a wait for the file with no word looks like a hang."""


class Renderer:
    """Progress events drawn on stderr (a callable: pass it as `progress=`)."""

    def __init__(self, quiet: bool = False, transient: bool = False, console: Console | None = None):
        self.quiet, self.transient = quiet, transient
        self.console = console or err_console()
        self.live: Any = None  # the rich Status or Progress now shown
        self.board = ""  # which layout `live` is: "status", or a key of BOARDS
        self.tasks: dict[str, Any] = {}  # a bar's name → its task on the board

    def __call__(self, event: Event) -> None:
        if self.quiet and event.kind not in QUIET_KINDS:
            return
        HANDLERS.get(event.kind, _unknown)(self, event)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
        self.live, self.board, self.tasks = None, "", {}

    def open(self, board: str) -> Any:
        """The live display `board` (a key of BOARDS), opened unless it is the one shown."""
        if self.board != board:
            self.close()
            from rich.progress import Progress as Bars

            self.live = Bars(*BOARDS[board](), console=self.console, transient=self.transient)
            self.live.__enter__()
            self.board = board
        return self.live

    def line(self, text: str, **how) -> None:
        """A line above the live display (or alone)."""
        self.console.print(text, highlight=False, **how)


# -- the layouts of bars ---------------------------------------------------------------------------


def _engine_columns() -> tuple:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn())


def _steps_columns() -> tuple:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (TextColumn("steps"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
            TextColumn("lr {task.fields[lr]}"), TextColumn("RankMe {task.fields[rankme]} αReQ {task.fields[alpha]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def _bar_columns() -> tuple:
    from rich.progress import (
        BarColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
            TimeRemainingColumn())


BOARDS: dict[str, Callable[[], tuple]] = {
    "engine": _engine_columns,  # checkpoints of an ingest, and the tokens of the current one
    "steps": _steps_columns,  # train-mini's loop, with its loss, lr, RankMe and αReQ
    "bars": _bar_columns,  # any other count (an index build's stages)
}


# -- one handler per kind (geowh.progress.KINDS) ---------------------------------------------------


def _info(r: Renderer, e: Event) -> None:
    r.close()
    r.line(e.text)


def _note(r: Renderer, e: Event) -> None:
    r.line(f"[yellow]note:[/] {escape(e.text)}", soft_wrap=True)


def _stage(r: Renderer, e: Event) -> None:
    r.close()
    r.console.rule(f"[bold]{e.text}", align="left")


def _status(r: Renderer, e: Event) -> None:
    if r.board != "status":
        r.close()
        r.live = r.console.status(e.text)
        r.live.__enter__()
        r.board = "status"
    else:
        r.live.update(e.text)


def _bar(r: Renderer, e: Event) -> None:
    if e.text == "tokens" and r.board == "engine":  # the forward passes of the checkpoint being measured
        r.live.update(r.tasks["tokens"], completed=e.done, total=e.total, visible=True)
    elif e.text == "steps":
        _steps(r, e)
    else:
        bars = r.open("bars")
        if e.text not in r.tasks:
            r.tasks[e.text] = bars.add_task(e.text, total=e.total)
        bars.update(r.tasks[e.text], completed=e.done, total=e.total)


def _steps(r: Renderer, e: Event) -> None:
    if r.board != "steps":
        r.open("steps")
        r.tasks["steps"] = r.live.add_task("train", total=e.total, completed=e.done or 0, loss="…", lr="…",
                                           rankme="…", alpha="…")
    shown: dict[str, str] = {}
    if "loss" in e.data:
        shown |= {"loss": f"{e.data['loss']:.3f}", "lr": f"{e.data['lr']:.2e}"}
    if "rankme" in e.data:  # a checkpoint's live geometry, shown until the next one
        shown |= {"rankme": f"{e.data['rankme']:.1f}", "alpha": f"{e.data['alpha_req']:.3f}"}
    r.live.update(r.tasks["steps"], completed=e.done, total=e.total, **shown)


def _planned(r: Renderer, e: Event) -> None:
    if not e.total:
        return
    bars = r.open("engine")
    r.tasks["checkpoints"] = bars.add_task("checkpoints", total=e.total)
    r.tasks["tokens"] = bars.add_task("tokens", total=None, visible=False)


def _started(r: Renderer, e: Event) -> None:
    if r.board == "engine":
        r.live.reset(r.tasks["tokens"], total=None, visible=False, description=f"{e.text} tokens")


def _finished(r: Renderer, e: Event) -> None:
    if r.board != "engine":
        return
    r.live.advance(r.tasks["checkpoints"])
    entry = e.data
    if entry["status"] == "ok":
        rate = f"  {entry['tokens_per_s']} tokens/s" if entry["tokens_per_s"] else ""
        r.live.console.print(f"[green]ok[/] {entry['checkpoint']}  {entry['seconds']} s{rate}")
    else:
        r.line(f"[red]failed[/] {entry['checkpoint']}: {escape(entry['error'])}")


def _locked(r: Renderer, e: Event) -> None:
    r.line(
        f"[yellow]waiting[/] for {escape(str(e.data.get('db', 'the warehouse')))}: held by {escape(e.text)}. The computed "
        "checkpoint is kept and written as soon as the file is free; Ctrl-C stops with the finished checkpoints written."
    )


def _ingested(r: Renderer, e: Event) -> None:
    entry = e.data["detail"]
    what = "skipped (already done)" if entry["status"] == "skipped" else f"{entry['seconds']} s"
    r.line(f"[green]ok[/] {e.data['checkpoint']}  {what}")


def _failed(r: Renderer, e: Event) -> None:
    r.line(f"[red]failed[/] {e.data['checkpoint']}: {escape(e.data['detail']['error'])}")


def _waiting(r: Renderer, e: Event) -> None:
    r.line(f"[dim]waiting for {', '.join(e.data['detail']['checkpoints'])} to be complete[/]")


def _phase(r: Renderer, e: Event) -> None:
    typer.echo(f"step {e.data['step']:,}: {e.data['detail']['before']} -> {e.data['detail']['after']}")  # the result: stdout


def _idle(r: Renderer, e: Event) -> None:
    r.line(f"no new checkpoint for {e.data['detail']['seconds']:g} s: done")


def _unknown(r: Renderer, e: Event) -> None:
    """A kind of a newer library than this renderer: its text, if it has one, as a line."""
    if e.text:
        r.line(escape(e.text))


HANDLERS: dict[str, Callable[[Renderer, Event], None]] = {
    "info": _info, "note": _note, "stage": _stage, "status": _status, "bar": _bar,
    "planned": _planned, "started": _started, "finished": _finished, "locked": _locked,
    "ingested": _ingested, "failed": _failed, "waiting": _waiting, "phase": _phase, "idle": _idle,
}
"""How each kind of geowh.progress.KINDS is drawn (a test checks that every kind has one)."""
