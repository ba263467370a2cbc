"""The run engine: every checkpoint of a series → the measurements asked for → one transaction each.

`geowh ingest` (geometry, optionally with memorization) and `geowh memorize` (memorization
alone) are this one engine; the measurements are entries of the registry (ingest/measurements/)
or `Measurement`s given. Its parts, kept apart so that a distributed or a live run plugs in:

- `plan_ingest(model, config, selection, measurements, options)` (engine/plan.py) resolves the
  series and builds the measurements. Every option is checked there (`IngestConfig` and each
  measurement check themselves when built) or, for the device, by the executor's `prepare`,
  before anything is written.
- `process_checkpoint(ref, plan)` loads the checkpoint once, runs every measurement on it, and
  RETURNS a `CheckpointResult` with every row to write. An expected failure (a
  `CheckpointError`: download, corrupt weights, out of memory, NaN features) is a failed
  result; any other exception is a bug and is raised.
- `write_result(wh, result)` writes a result's rows and its `runs` row in one transaction.
- `run(plan, wh)` is the driver: starts the measurements (and writes what they cached), skips
  what is done, writes each checkpoint's `running` row, hands the checkpoints to an `Executor`
  (engine/executors.py: `Serial`; engine/cluster.py: `RayExecutor`) and writes each result as it
  comes back. Only the driver writes.
- It reports progress through `progress` (geowh/progress.py: planned, started, bar, finished,
  locked) and prints nothing itself (cli/progress.py renders it).

`ingest(model, config, selection)` is plan + run; `live`-measured checkpoints
(`geowh.integrations`) call `process_checkpoint(ref, plan, loaded=model)` and `write_result`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from geowh.errors import CheckpointError
from geowh.ingest.config import IngestConfig, Selection
from geowh.ingest.engine.executors import Executor, Serial
from geowh.ingest.engine.plan import (
    CheckpointResult,
    Measurement,
    Meter,
    Plan,
    Rows,
    load_options,
    plan_ingest,
)
from geowh.ingest.sources.series import CheckpointRef, Series, check_source
from geowh.progress import Event, Progress, silent
from geowh.signals import interrupted_by

if TYPE_CHECKING:
    from geowh.ingest.sources.models import Loaded
    from geowh.warehouse import Warehouse


def process_checkpoint(
    ref: CheckpointRef,
    plan: Plan,
    *,
    run_id: str | None = None,
    progress: Progress = silent,
    loaded: Loaded | None = None,
    load: Callable[[], Any] | None = None,
) -> CheckpointResult:
    """Load `ref` once, run the geometry (features → spectra → metrics) and the measurements.

    Returns a result holding all rows, or a failed result with the error for a checkpoint
    that cannot be processed: a `CheckpointError` (download, weights, memory, NaN). Any other
    exception is raised with its traceback: a config error (InputError) would fail every
    checkpoint alike, and anything else is a bug to see, not a checkpoint to skip.

    `loaded` measures a model already in memory instead of loading `ref` (a `Loaded` whose
    `ref` is `ref`; `geowh.integrations` passes the model in training): the rows are those
    an ingest of the same weights writes, and the model is left as it was, not released.
    `load` replaces how `ref` is loaded otherwise (`Serial` passes one that takes the weights
    a thread read ahead); its model is released after, its `CheckpointError` fails `ref`.
    `progress` hears the measurements' forward passes (`bar` events of "tokens").
    """
    from geowh.ingest.sources.models import device_name, dtype_name, load_checkpoint
    from geowh.warehouse import utcnow

    run_id = run_id or str(uuid.uuid4())
    started = utcnow()
    clock = time.perf_counter()
    meter = Meter(progress)
    given = loaded is not None
    try:
        t = time.perf_counter()
        if loaded is None:
            loaded = load() if load else load_checkpoint(ref, device=plan.config.device, **load_options(plan))
        meter.seconds["load"] = time.perf_counter() - t
        rows: Rows = {}
        for m in plan.measurements:
            t = time.perf_counter()
            for table, extra in m.measure(loaded, ref, plan.config, meter).items():
                rows.setdefault(table, []).extend(extra)
            meter.seconds[m.name] = time.perf_counter() - t
        status, error = "ok", None
    except CheckpointError as e:
        if interrupted_by(e) is not None:  # a Ctrl-C that a library wrapped in an error of its own
            raise
        status, error, rows = "failed", str(e), {}
    finally:
        # runs on the way out of a bug too: the weights are freed before the traceback is shown
        if loaded is not None:
            device, dtype, commit = loaded.device, loaded.dtype, loaded.hub_commit
            models_row = plan.series.models_row() | loaded.models_row()
            models_row["tokenizer"] = models_row["tokenizer"] or loaded.tokenizer.name_or_path
            if not given:
                loaded.release()
        else:
            device, dtype, commit, models_row = None, None, None, plan.series.models_row()
    checkpoint = ref.row() | ({"fingerprint": commit} if commit else {})  # a hub checkpoint is its commit
    if status != "ok":  # weights that could not be measured (corrupt, half-copied) are no reference
        checkpoint["fingerprint"] = None
    rows = {"models": [models_row], "checkpoints": [checkpoint], **rows}
    elapsed = time.perf_counter() - clock
    run = plan.run_row(
        ref,
        run_id,
        status,
        error=error,
        device=device_name(device) if device is not None else None,
        dtype=dtype_name(dtype) if dtype is not None else plan.dtype,
        hub_commit=commit,
        started_at=started,
        finished_at=utcnow(),
        stage_seconds={k: round(v, 3) for k, v in meter.seconds.items()},
    )
    if rows.get("probes"):  # the probe a measurement tokenized names the run
        run["probe"] = rows["probes"][0]["probe"]
    tokens = meter.tokens if status == "ok" else 0
    return CheckpointResult(ref, run_id, status, rows, run, error, tokens, elapsed)


# -- writing -----------------------------------------------------------------------------------


def write_result(wh: Warehouse, result: CheckpointResult) -> None:
    """Write one checkpoint's rows and its `runs` row in one transaction."""
    tables = result.tables()
    run_tables = _tables_with_run_id(wh, [t for t in tables if t != "runs"])
    for table in run_tables:
        for row in tables[table]:
            row.setdefault("run_id", result.run_id)
    wh.write(tables)


def _tables_with_run_id(wh, tables: list[str]) -> list[str]:
    if not tables:
        return []
    with wh.connect(read_only=True) as con:
        found = con.execute(
            "SELECT DISTINCT table_name FROM duckdb_columns() WHERE database_name = current_database() "
            "AND column_name = 'run_id'"
        ).fetchall()
    return [t for t in tables if t in {r[0] for r in found}]


# -- the loop ----------------------------------------------------------------------------------


class CheckpointTally:
    """Counts over the `checkpoints` entries of a summary dataclass (ingest's, watch's)."""

    checkpoints: list[dict]
    if TYPE_CHECKING:
        __dataclass_fields__: ClassVar[dict[str, Any]]  # the subclasses are dataclasses (for asdict)

    def count(self, status: str) -> int:
        return sum(1 for c in self.checkpoints if c["status"] == status)

    @property
    def failed(self) -> int:
        return self.count("failed")

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.count("ok"), "failed": self.failed, "skipped": self.count("skipped")}


@dataclass
class IngestSummary(CheckpointTally):
    """What an ingest did, checkpoint by checkpoint."""

    model: str
    probe: str | None
    """What the measurements read: the probe set's name (geometry), else the first one's (a task)."""
    config_key: str
    db: str
    checkpoints: list[dict] = field(default_factory=list)
    """One entry per selected checkpoint: checkpoint, step, status (ok, failed, skipped), seconds, tokens_per_s, error."""
    remeasured: list[str] = field(default_factory=list)
    """Checkpoints done before with the same settings but older metric definitions, measured again."""


@dataclass(frozen=True)
class Job:
    """One checkpoint to process, under the run id its `running` row was written with."""

    ref: CheckpointRef
    run_id: str


@dataclass
class Work:
    """`process_checkpoint` of one job under a plan: what an executor runs (picklable)."""

    plan: Plan
    progress: Progress = silent

    def __call__(self, job: Job, load: Callable[[], Any] | None = None) -> CheckpointResult:
        return process_checkpoint(job.ref, self.plan, run_id=job.run_id, progress=self.progress, load=load)

    def lost(self, job: Job, why: str) -> CheckpointResult:
        """The failed result of a job whose process died before it could return one."""
        from geowh.warehouse import utcnow

        rows = {"models": [self.plan.series.models_row()], "checkpoints": [job.ref.row()]}
        run = self.plan.run_row(job.ref, job.run_id, "failed", error=why, finished_at=utcnow())
        return CheckpointResult(job.ref, job.run_id, "failed", rows, run, why)


def ingest(
    model: str,
    config: IngestConfig | None = None,
    selection: Selection = Selection(),
    *,
    measurements: Sequence[Measurement | Callable[..., Rows]] = (),
    options: Mapping[str, Any] | None = None,
    force: bool = False,
    evict: bool = False,
    db: str | Path | None = None,
    lock_timeout: float | None = None,
    progress: Progress = silent,
    executor: Executor | None = None,
) -> IngestSummary:
    """Ingest every selected checkpoint of `model` into the warehouse `db` (the Python `geowh ingest`).

    Completed checkpoints (an ok run with the same config key) are skipped unless `force`;
    a checkpoint that fails gets a failed `runs` row and the loop goes on. While another
    process holds the file, a computed checkpoint waits for it (`lock_timeout` seconds, by
    default as long as it takes), telling `progress` (a `locked` event) when a wait begins. Ctrl-C or
    SIGTERM stops with the finished checkpoints written and the current one `interrupted`;
    `running` rows of `model` left by a killed process are marked `interrupted` first.
    `config` defaults to `IngestConfig()`; `selection` to every checkpoint. The measurements are
    those of the registry that `config` (geometry, unless `config.geometry` is off) and `options`
    ask for, then `measurements` (`plan_ingest`). `progress` hears of each checkpoint (`planned`,
    `started`, `bar`, `finished`: geowh/progress.py); by default nothing is told.

    Example:
        config = IngestConfig(probe="docs.txt", n=500, max_len=128)
        summary = ingest("./my-run", config, Selection(checkpoints="log:8"), db="w.duckdb",
                         options={"memorization": "triviaqa", "index": "indexes/pile"})
        summary.failed   # 0
    """
    from geowh.allocator import reuse_freed_memory
    from geowh.warehouse import Warehouse

    reuse_freed_memory()  # the forward passes' large activations reuse freed memory (as the CLI does)
    plan = plan_ingest(model, config or IngestConfig(), selection, measurements, options)
    wh = Warehouse(db, lock_timeout=lock_timeout, progress=progress)
    return run(plan, wh, force=force, evict=evict, progress=progress, executor=executor)


def run(
    plan: Plan,
    wh: Warehouse,
    *,
    force: bool = False,
    evict: bool = False,
    progress: Progress = silent,
    executor: Executor | None = None,
) -> IngestSummary:
    """The driver: every checkpoint of `plan` not yet done, processed by `executor`, written here.

    Each checkpoint gets a `running` row before it is handed out and its rows in one
    transaction when its result comes back. A failed checkpoint is recorded and the run goes
    on. An exception (a bug, a full disk) or a signal stops the run: the checkpoints handed
    out and not written are recorded `failed` (with the error) or `interrupted`, then it is
    raised. A written checkpoint is never overwritten by that record.
    """
    executor = executor or Serial()
    shared: Rows = {}  # the measurements' rows of no checkpoint (caches): the driver writes them
    for m in plan.measurements:  # before `prepare` ships the measurements to where they run
        for table, rows in m.start(plan, wh).items():
            shared.setdefault(table, []).extend(rows)
    plan = executor.prepare(plan)
    _import_now(plan.series)
    probe = next((m.probe for m in plan.measurements if m.probe), None)
    summary = IngestSummary(plan.series.model, probe, plan.config_key, str(wh.path))
    check_source(plan.series, *wh.stored_series(plan.series.model), force=force)  # never another run's name
    wh.close_stale_runs(plan.series.model)
    if shared:
        wh.write(shared)
    done = set() if force else wh.completed(plan.kind, plan.series.model, plan.config_key)
    todo = [r for r in plan.series.checkpoints if r.label not in done]
    if not force and plan.config.geometry:  # said, not silent: a definition changed since they were measured
        before = wh.measured_before(plan.kind, plan.series.model, plan.settings_key, plan.config_key)
        summary.remeasured = [r.label for r in todo if r.label in before]
    for ref in plan.series.checkpoints:
        if ref.label in done:
            summary.checkpoints.append(_entry(ref, "skipped"))
    jobs = [Job(ref, str(uuid.uuid4())) for ref in todo]
    handed_out: dict[str, tuple[Job, Any]] = {}  # run_id → (job, started_at): running rows not yet finished
    progress(Event("planned", total=len(todo), data={"checkpoints": [r.label for r in todo]}))

    def started(job: Job) -> None:
        progress(Event("started", job.ref.label))
        at = _now()
        handed_out[job.run_id] = (job, at)
        wh.write({"runs": [plan.run_row(job.ref, job.run_id, "running", started_at=at)]})

    writing = None
    results = executor.map(Work(plan, progress), jobs, started)
    try:
        for result in results:
            writing = result
            if result.run.get("started_at") is None:  # a lost job: its process died before it could say
                result.run["started_at"] = handed_out[result.run_id][1]
            write_result(wh, result)
            handed_out.pop(result.run_id, None)
            writing = None
            if result.ok and evict:
                from geowh.ingest.sources.models import evict as evict_files

                evict_files(result.ref)
            entry = _entry(result.ref, result.status, result)
            summary.checkpoints.append(entry)
            progress(Event("finished", result.ref.label, data=entry))
    except BaseException as e:  # config errors, bugs, a full disk, Ctrl-C: the attempts are recorded, then we stop
        stop = interrupted_by(e)
        if stop is not None and writing is not None and stop.after_block:
            # the signal waited for write_result's commit: this checkpoint is stored
            handed_out.pop(writing.run_id, None)
            summary.checkpoints.append(_entry(writing.ref, writing.status, writing))
        status, why = ("interrupted", f"stopped by {stop}") if stop else ("failed", f"{type(e).__name__}: {e}")
        for job, at in handed_out.values():
            _record_end(wh, plan.run_row(job.ref, job.run_id, status, error=why, started_at=at, finished_at=_now()))
        if stop is None:
            raise
        stopped = ", ".join(job.ref.label for job, _ in handed_out.values())
        stop.detail = (
            f"{summary.count('ok')} checkpoint(s) of this run written"
            + (f", {stopped} recorded as interrupted" if stopped else "")
            + "; run the same command again to resume"
        )
        raise stop from None
    finally:  # now, not when collected: the executor's work still out is cancelled, its threads end
        getattr(results, "close", lambda: None)()
    order = {r.label: i for i, r in enumerate(plan.series.checkpoints)}
    summary.checkpoints.sort(key=lambda c: order[c["checkpoint"]])
    return summary


def _now():
    from geowh.warehouse import utcnow

    return utcnow()


def _record_end(wh, run: dict) -> None:
    """Record how an attempt ended, at once or not at all: never wait for the file again, and let
    a second failure (the disk that is full) not hide the first. A `running` row that stays is
    stale, and the next ingest marks it."""
    from geowh.errors import GeowhError
    from geowh.warehouse import Warehouse

    try:
        Warehouse(wh.path, lock_timeout=0).write({"runs": [run]})
    except GeowhError:
        pass


def _import_now(series: Series) -> None:
    """Import what loading a checkpoint needs, here in the main thread before the first one.

    transformers imports a model's code lazily, at its first from_pretrained; a Ctrl-C in the
    middle of that import left the module half-made, and every later checkpoint then failed
    with "Could not import module 'GPTNeoXModel'". Threads (the prefetcher) must not be the
    first to import either.
    """
    import huggingface_hub  # noqa: F401
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    from geowh.ingest.sources.models import quiet_transformers

    folder = next((r.path for r in series.checkpoints if r.path is not None and (r.path / "config.json").is_file()), None)
    if folder is None:
        return
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(folder)
            MODEL_MAPPING[type(config)], MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # imports the model's code
    except Exception:  # an unreadable config fails its checkpoint, where it is reported
        pass


def _entry(ref: CheckpointRef, status: str, result: CheckpointResult | None = None) -> dict:
    seconds = round(result.seconds, 2) if result else None
    rate = round(result.tokens / result.seconds) if result and result.tokens and result.seconds else None
    return {
        "checkpoint": ref.label,
        "step": ref.step,
        "status": status,
        "seconds": seconds,
        "tokens_per_s": rate,
        "error": result.error if result else None,
        "run_id": result.run_id if result else None,
    }
