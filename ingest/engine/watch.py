"""`geowh watch DIR`: ingest a run's checkpoints as training writes them, and follow its phases.

Each poll lists the run folder as `geowh ingest` does (every layout of `ingest.series`) and
picks the checkpoints that are complete: the trainer's completion marker is there
(`trainer_state.json`, which the HF Trainer writes last), or none of the files changed for
`settle` seconds. Either way every safetensors file must be whole (its size is what its
header says), so a half-written one is never read, and so never recorded as failed. Complete
checkpoints are ingested one at a time by `ingest.engine.run.ingest` (resume, failures and the
transaction per checkpoint are the ingest's), after each the phases are computed again, and
the caller hears of it through `progress` (geowh/progress.py: ingested, failed, waiting, phase,
idle); between checkpoints `stop()` is asked whether to end. The library prints nothing.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geowh.errors import InputError
from geowh.ingest.engine.run import CheckpointTally
from geowh.progress import Event, Progress, silent
from geowh.warehouse import Warehouse, as_warehouse

if TYPE_CHECKING:
    from geowh.ingest.config import IngestConfig
    from geowh.ingest.engine.plan import Measurement, Rows

MARKERS = ("trainer_state.json",)
"""Files a trainer writes after everything else in a checkpoint folder."""
WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _event(kind: str, checkpoint: str | None = None, step: int | None = None, detail: dict | None = None) -> Event:
    """A watch's event: its data is the line `geowh watch --json` prints (less the kind)."""
    return Event(kind, checkpoint or "", data={"checkpoint": checkpoint, "step": step, "detail": detail or {}})


@dataclass
class WatchSummary(CheckpointTally):
    model: str | None
    db: str
    checkpoints: list[dict] = field(default_factory=list)
    """The ingest entry of each checkpoint ingested (or skipped as already done)."""
    phases: list[dict] = field(default_factory=list)
    """The phases after the last checkpoint (empty while too few)."""
    stopped: str = ""
    """once, idle or stopped."""


def checkpoint_ready(folder: Path, settle: float, now: float | None = None) -> bool:
    """Whether a checkpoint folder is complete: config and whole weights, and marked or settled."""
    if not (folder / "config.json").is_file():
        return False
    try:
        files = [p for p in folder.rglob("*") if p.is_file()]
        weights = [p for pattern in WEIGHTS for p in folder.glob(pattern)]
        if not weights or not all(_whole(p) for p in weights if p.suffix == ".safetensors"):
            return False
        if not _shards_present(folder):
            return False
        if any((folder / m).is_file() for m in MARKERS):
            return True
        newest = max(p.stat().st_mtime for p in files)
    except OSError:  # a file vanished while we looked: a writer is busy there
        return False
    return (now if now is not None else time.time()) - newest >= settle


def _whole(path: Path) -> bool:
    """A safetensors file is 8 bytes of header length, the JSON header, then the data it indexes."""
    size = path.stat().st_size
    if size < 8:
        return False
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if 8 + length > size:
            return False
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return False
    try:
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return size == 8 + length + max(ends, default=0)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        # A header that parses but is not a safetensors header never becomes one: the file is
        # not being written but damaged, and loading it fails the checkpoint with the reason.
        return True


def _shards_present(folder: Path) -> bool:
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError):
            return False
        if not all((folder / s).is_file() for s in shards):
            return False
    return True


def watch(
    folder: str | Path,
    config: IngestConfig | None = None,
    *,
    interval: float = 10.0,
    settle: float = 30.0,
    once: bool = False,
    until_idle: float | None = None,
    progress: Progress = silent,
    stop: Callable[[], bool] | None = None,
    db: str | Path | Warehouse | None = None,
    name: str | None = None,
    measurements: Sequence[Measurement | Callable[..., Rows]] = (),
    options: Mapping[str, Any] | None = None,
) -> WatchSummary:
    """Ingest the complete checkpoints of `folder`, then each new one as it appears; recompute phases after each.

    `config` (an `IngestConfig`), `measurements` and `options` are those of `ingest.engine.run.ingest`;
    the measurements are built once, for every checkpoint's ingest (the probe is tokenized once).
    With `once`, what is complete now is ingested and the call returns; with `until_idle`, it
    returns after that many seconds without a new complete checkpoint; otherwise it runs until
    `stop()` returns true (checked between checkpoints and while waiting). `progress` hears of
    each checkpoint ingested or failed, of those still being written, of each new phase and of
    the idle end (geowh/progress.py).

    Example:
        watch("runs/my-run", IngestConfig(probe="held_out.txt", n=1000, max_len=256), db="w.duckdb", until_idle=3600)
    """
    from geowh.ingest.config import IngestConfig, Selection
    from geowh.ingest.engine.run import ingest
    from geowh.ingest.measurements import build

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{folder} is not a folder: give the run folder a training writes its checkpoints into")
    if interval <= 0 or settle < 0 or (until_idle is not None and until_idle < 0):
        raise InputError("--interval must be positive, --settle and --until-idle at least 0")
    config = config or IngestConfig()
    shared: tuple | None = None  # the measurements, built at the first checkpoint and kept for the others
    stop = stop or (lambda: False)
    wh = as_warehouse(db)
    summary = WatchSummary(name, str(wh.path))
    done: set[str] = set()
    labels: list[dict] = []
    shown_waiting: list[str] = []
    last_new = time.monotonic()
    while True:
        ready, waiting = _scan(root, settle)
        for ref in (r for r in ready if r.label not in done):
            if stop():
                summary.stopped = "stopped"
                return summary
            try:
                if shared is None:
                    given = {getattr(m, "name", "") for m in measurements}
                    shared = (*build(config, options or {}, skip=given), *measurements)
                result = ingest(str(root), config, Selection(checkpoints=ref.label, name=name),
                                measurements=shared, db=wh.path)
            except InputError:
                if ref.path.is_dir():
                    raise
                continue  # deleted since the scan (a trainer's save_total_limit): nothing to ingest
            summary.model = result.model
            for entry in result.checkpoints:
                summary.checkpoints.append(entry)
                progress(_event("failed" if entry["status"] == "failed" else "ingested", entry["checkpoint"],
                                entry["step"], entry))
            done.add(ref.label)
            last_new = time.monotonic()
            labels = _phases(wh, result.model, labels, summary, progress)
        if waiting != shown_waiting:
            shown_waiting = waiting
            if waiting:
                progress(_event("waiting", detail={"checkpoints": waiting}))
        if once:
            summary.stopped = "once"
            return summary
        polled = time.monotonic()
        while time.monotonic() - polled < interval:  # short naps, so that a stop is heard at once
            if stop():
                summary.stopped = "stopped"
                return summary
            if until_idle is not None and time.monotonic() - last_new >= until_idle:
                summary.stopped = "idle"
                progress(_event("idle", detail={"seconds": until_idle}))
                return summary
            time.sleep(min(0.2, interval))


def _scan(root: Path, settle: float) -> tuple[list, list[str]]:
    """The run's checkpoints (as `geowh ingest` lists them) that are complete, and the labels of the others."""
    from geowh.ingest.sources.series import is_checkpoint_dir, local_step, resolve_series

    try:
        children = [p for p in root.iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"the run folder {root} disappeared while being watched: what was ingested is stored; "
                         "watch it again once it is back") from None
    if not is_checkpoint_dir(root) and not any(local_step(p.name) is not None or is_checkpoint_dir(p) for p in children):
        return [], []  # no checkpoint yet: training has not saved one
    now = time.time()
    refs = resolve_series(str(root)).checkpoints
    ready = [r for r in refs if r.path is not None and checkpoint_ready(r.path, settle, now)]  # local: all have one
    return ready, [r.label for r in refs if r not in ready]


def _phases(wh, model: str, before: list[dict], summary: WatchSummary, progress: Progress) -> list[dict]:
    """Phases of `model` now; a `phase` event for each phase start that was not there before."""
    from geowh.queries.phases import phases

    try:
        rows = phases(wh, model).select("phase", "start_step", "end_step", "start_tokens").to_dicts()
    except InputError:  # too few checkpoints so far
        return before
    summary.phases = rows
    # Boundaries move a little as checkpoints arrive; a phase is new when the sequence of labels changes.
    same = 0
    while same < min(len(rows), len(before)) and rows[same]["phase"] == before[same]["phase"]:
        same += 1
    for i in range(max(same, 1), len(rows)):
        progress(_event("phase", step=rows[i]["start_step"],
                        detail={"before": rows[i - 1]["phase"], "after": rows[i]["phase"], "tokens": rows[i]["start_tokens"]}))
    return rows
