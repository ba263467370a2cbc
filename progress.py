"""The one way geowh's library reports progress: it calls `progress(Event(kind, …))` and prints nothing.

Every long-running library function takes `progress: Progress = silent` and calls it with an
`Event`; the CLI passes its one renderer (cli/progress.py), which maps each kind to a bar or a
line, and a test passes `events.append` to a list. `KINDS` lists the kinds and what their
fields hold. No torch here: the warehouse and the queries report through it too.

Example:
    events: list[Event] = []
    found = phases(wh, "m", progress=events.append)  # m: measured at layers 3 and 24
    notes = [e.text for e in events if e.kind == "note"]  # ['m: using layer 24 (the last; pass --layer)']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Something a library function did or is doing. Which fields are set depends on `kind` (KINDS)."""

    kind: str
    text: str = ""
    """The line, the stage, the name of what a bar counts, or the checkpoint it concerns."""
    done: int | None = None
    total: int | None = None
    """A bar's count so far and in all (None: not known)."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """What the kind carries besides (JSON-able): a checkpoint's summary entry, a bar's loss and lr, …"""


Progress = Callable[[Event], None]
"""What a library function calls with each event: a plain callable, so a list's `append` is one."""


def silent(event: Event) -> None:
    """The default progress: the library is quiet."""


KINDS: dict[str, str] = {
    # lines
    "info": "text: a line worth telling (what was prepared, what a job will do or did)",
    "note": "text: a caveat about a result (a choice made for the caller, something left out)",
    "stage": "text: a stage of a long job begins ('1/5 train-mini → checkpoints')",
    "status": "text: something that takes a while is under way, until the next event",
    "bar": "text names what is counted ('tokens', 'steps', 'index: tokenize'): done of total; data: values shown with it",
    # the engine (ingest, memorize, demo)
    "planned": "total: checkpoints to compute; data: {'checkpoints': [labels]}",
    "started": "text: the label of the checkpoint that begins",
    "finished": "text: the checkpoint's label; data: its summary entry (checkpoint, step, status, seconds, tokens_per_s, error)",
    "locked": "text: who holds the warehouse file while a write waits for it",
    # the watch of a training run: data is the JSON line of `geowh watch --json` less its kind
    "ingested": "text: a checkpoint's label; data: {checkpoint, step, detail: its summary entry}",
    "failed": "text: a checkpoint's label; data: {checkpoint, step, detail: its summary entry}",
    "waiting": "data: {checkpoint, step, detail: {'checkpoints': labels still being written}}",
    "phase": "data: {checkpoint, step, detail: {before, after, tokens}}: a new phase starts at step",
    "idle": "data: {checkpoint, step, detail: {'seconds': s}}: no new checkpoint for s seconds",
}
"""Every kind an `Event` may have, with what its fields hold: a renderer handles each of these."""
