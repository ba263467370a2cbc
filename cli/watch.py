"""`geowh watch`: ingest a training run's checkpoints as they are written, and print its phases."""

from __future__ import annotations

import inspect
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from geowh.cli.common import app, err_console
from geowh.cli.ingest import ingest as ingest_command
from geowh.cli.progress import Renderer

if TYPE_CHECKING:
    from geowh.progress import Event

# The ingest options, declared once in cli/ingest.py; those about choosing hub checkpoints
# (or redoing them) do not apply to a folder being written.
NOT_WATCH_OPTIONS = {"model", "checkpoints", "revisions", "force", "evict"}


def watch(
    folder: Annotated[Path, typer.Argument(help="The run folder the training writes its checkpoints into.")],
    interval: Annotated[float, typer.Option(help="Seconds between two looks at the folder.")] = 10.0,
    settle: Annotated[
        float, typer.Option(help="A checkpoint without the trainer's completion marker is read once its files "
                                 "have not changed for this many seconds.")
    ] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="Ingest the complete checkpoints there now, then exit.")] = False,
    until_idle: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without a new checkpoint.")
    ] = None,
    **options,
) -> None:
    """Watch a training run: ingest each checkpoint once it is complete, and print when a new phase starts.

    Takes the options of `geowh ingest`. A checkpoint is read once the trainer's completion
    marker (trainer_state.json) is there or its files stopped changing (--settle), and its
    safetensors are whole: a half-written one is never read. Ctrl-C stops after the current
    checkpoint (twice: at once). The exit code is 1 if a checkpoint failed. --json prints one
    JSON object per line: each event (ingested, failed, waiting, phase, idle), the summary last.

    Example: geowh watch runs/my-run --probe held_out.txt --n 1000 --max-len 256 --until-idle 3600
    """
    from geowh.cli.ingest import config_of
    from geowh.ingest.engine.watch import watch as run_watch

    json_ = options["json_"]
    quiet = options["quiet"] or json_
    config = config_of(options)
    stopping = _StopOnCtrlC()
    with stopping, Renderer(quiet=quiet) as shown:
        summary = run_watch(
            folder, config, interval=interval, settle=settle, once=once, until_idle=until_idle,
            progress=_json_line if json_ else shown,
            stop=stopping, options=options, db=options["db"], name=options["name"],
        )
    if json_:
        _json_line({"kind": "summary"} | summary.to_dict())
    elif not quiet:
        err_console().print(
            f"{summary.count('ok')} ok, {summary.count('skipped')} skipped (already done), {summary.failed} failed "
            f"→ {summary.db}" + (" (stopped)" if summary.stopped == "stopped" else ""), highlight=False,
        )
    if summary.stopped == "stopped":  # by Ctrl-C, as an ingest stopped by it: exit 130
        err_console().print("[bold red]stopped[/] by SIGINT: what had finished is stored; run the command again to resume",
                            highlight=False)
        raise typer.Exit(128 + signal.SIGINT)
    if summary.failed:
        raise typer.Exit(1)


_ingest_params = inspect.signature(ingest_command, eval_str=True).parameters
watch.__signature__ = inspect.signature(watch, eval_str=True).replace(  # type: ignore[attr-defined]  # inspect reads it; typeshed has no such attribute on functions
    parameters=[p for name, p in inspect.signature(watch, eval_str=True).parameters.items() if name != "options"]
    + [p for name, p in _ingest_params.items() if name not in NOT_WATCH_OPTIONS]
)
app.command()(watch)


def _json_line(event: Event | dict) -> None:
    """One JSON object per line (events as they happen, the summary last), for a pipe that reads as it goes."""
    line = event if isinstance(event, dict) else {"kind": event.kind, **event.data}
    sys.stdout.write(json.dumps(line, default=str) + "\n")
    sys.stdout.flush()


class _StopOnCtrlC:
    """The first Ctrl-C asks the watch to stop between checkpoints; the second interrupts at once."""

    def __init__(self):
        self.asked = False
        self.previous = None

    def __call__(self) -> bool:
        return self.asked

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        err_console().print("stopping after the current checkpoint (Ctrl-C again to stop at once)")

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
