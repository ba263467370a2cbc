"""The run engine: every checkpoint of a series → the measurements asked for → one transaction each.

`geowh ingest` (geometry, optionally with memorization) and `geowh memorize` (memorization
alone) are this one engine. Its parts, kept apart so that a distributed or a live run plugs in:

- `plan_ingest(model, config, selection, measurements)` resolves the series, loads the probe
  texts and fixes the config. Every option is checked here (`IngestConfig` checks itself when
  built) or, for the device, by the executor's `prepare`, before anything is written.
- `process_checkpoint(ref, plan)` loads the checkpoint once, runs the geometry (unless
  `config.geometry` is off) and every `Measurement`, and RETURNS a `CheckpointResult` with every
  row to write. An expected failure (a `CheckpointError`: download, corrupt weights, out of
  memory, NaN features) is a failed result; any other exception is a bug and is raised.
- `write_result(wh, result)` writes a result's rows and its `runs` row in one transaction.
- `run(plan, wh)` is the driver: skips what is done, writes each checkpoint's `running` row,
  hands the checkpoints to an `Executor` and writes each result as it comes back. Only the
  driver writes. `Serial` (the default) processes them one after the other in this process (on
  a GPU the next one loading into host memory meanwhile); `ingest.cluster.RayExecutor` runs
  them on a Ray cluster's workers and yields the results.
- `Events` is how the engine reports progress; it prints nothing itself (cli/ renders it).

`ingest(model, config, selection)` is plan + run; `live`-measured checkpoints
(`geowh.integrations`) call `process_checkpoint(ref, plan, loaded=model)` and `write_result`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from geowh.errors import CheckpointError, InputError
from geowh.ingest.config import MIN_SUBSET_ROWS, IngestConfig, Selection
from geowh.ingest.probes import Probe, ProbeTexts
from geowh.ingest.series import CheckpointRef, Series
from geowh.signals import interrupted_by
from geowh.warehouse.runs import run_row

KIND = "geometry"


Rows = dict[str, list[dict]]


@dataclass(frozen=True)
class Measurement:
    """Another measurement on the loaded checkpoint, written in the checkpoint's transaction.

    `fn(loaded, ref, config) -> {table: rows}`; rows without `run_id` get the run's id where
    the table has that column. `config` joins the run's config and its key (so a rerun with
    other settings is not skipped); `with_head` loads the causal LM instead of the base model;
    `probe` is what the measurement reads, the run's `probe` when geometry is off. A plain
    callable works too (its name is its config). A measurement raises `CheckpointError` for a
    checkpoint it cannot measure (that checkpoint fails, the run goes on); anything else it
    raises stops the run with its traceback.
    """

    name: str
    fn: Callable[..., Rows]
    config: dict = field(default_factory=dict)
    with_head: bool = False
    probe: str | None = None

    def __call__(self, loaded, ref: CheckpointRef, config: IngestConfig) -> Rows:
        return self.fn(loaded, ref, config)


def as_measurement(m: Measurement | Callable[..., Rows]) -> Measurement:
    if isinstance(m, Measurement):
        return m
    name = getattr(m, "__name__", type(m).__name__)
    return Measurement(name, m, dict(getattr(m, "config", {}) or {}), bool(getattr(m, "with_head", False)))


@dataclass
class Plan:
    """What every checkpoint of one ingest shares."""

    series: Series
    texts: ProbeTexts | None
    """The probe texts; None when geometry is off."""
    config: IngestConfig
    dtype: str | None
    """Resolved dtype name (auto → bfloat16 on a capable GPU, float32 otherwise); None until an
    executor's `prepare` resolves it where the checkpoints will run (the config key needs it)."""
    measurements: tuple[Measurement, ...] = ()
    probes: dict[str, Probe] = field(default_factory=dict)
    """Tokenized probes by tokenizer fingerprint (checkpoints of a series share one)."""

    @property
    def kind(self) -> str:
        """runs.kind: geometry, or the measurements' names when geometry is off (memorization)."""
        return KIND if self.config.geometry else "+".join(m.name for m in self.measurements)

    @property
    def config_dict(self) -> dict:
        d = asdict(self.config)
        d.update(kind=self.kind, dtype=self.dtype, requested_dtype=self.config.dtype,
                 texts_hash=self.texts.texts_hash if self.texts else None)
        d["measurements"] = {m.name: m.config for m in self.measurements}
        return d

    @property
    def config_key(self) -> str:
        d = self.config_dict
        if self.config.geometry:
            keyed = {k: d[k] for k in IngestConfig.key_fields} | {
                "probe": self.texts.name,  # a file's name, not the path it was given by: the texts hash says the rest
                "texts_hash": self.texts.texts_hash,
            }
        else:
            keyed = {"tokenizer": self.config.tokenizer}
        keyed |= {"kind": self.kind, "dtype": self.dtype, "measurements": d["measurements"]}
        return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run_row(self, ref: CheckpointRef, run_id: str, status: str, **fields: Any) -> dict:
        probe = next((m.probe for m in self.measurements if m.probe), None) if not self.config.geometry else None
        return run_row(run_id, self.kind, ref.model, status, checkpoint=ref.label, probe=probe,
                       config_key=self.config_key, config=self.config_dict) | fields


@dataclass
class CheckpointResult:
    """The outcome of one checkpoint: the rows to write, or why there are none."""

    ref: CheckpointRef
    run_id: str
    status: str  # ok or failed
    rows: Rows
    run: dict
    """The `runs` row."""
    error: str | None = None
    tokens: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def tables(self) -> Rows:
        return {**self.rows, "runs": [self.run]}


def plan_ingest(
    model: str,
    config: IngestConfig,
    selection: Selection = Selection(),
    measurements: Sequence[Measurement | Callable[..., Rows]] = (),
) -> Plan:
    """Resolve the series and probe texts; fix the config. Loads no weights.

    The dtype stays unresolved: `auto` depends on the device of the process that computes,
    which for a distributed run is not this one (`Executor.prepare`, `resolved_here`).
    """
    from geowh.ingest.probes import load_texts
    from geowh.ingest.series import require_hub, resolve_series

    measurements = tuple(as_measurement(m) for m in measurements)
    if not config.geometry and not measurements:
        raise InputError("nothing to measure: geometry is off and no measurement was given")
    series = resolve_series(model, revisions=list(selection.revisions) if selection.revisions else None,
                            name=selection.name, checkpoints=selection.checkpoints)
    if any(r.repo for r in series.checkpoints):
        require_hub(f"download checkpoints of {series.model}")
    texts = load_texts(config.probe, n=config.n) if config.geometry else None
    return Plan(series, texts, config, None, measurements)


def resolved_here(plan: Plan) -> Plan:
    """`plan` with its device checked and its dtype resolved for this process's device."""
    from dataclasses import replace

    from geowh.ingest.models import resolve_device, resolve_dtype

    dtype = resolve_dtype(plan.config.dtype, resolve_device(plan.config.device))
    return replace(plan, dtype=str(dtype).removeprefix("torch."))


# -- one checkpoint ------------------------------------------------------------------------------


def process_checkpoint(
    ref: CheckpointRef,
    plan: Plan,
    *,
    run_id: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    loaded=None,
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
    """
    from geowh.ingest.models import device_name, load_checkpoint
    from geowh.warehouse import utcnow

    run_id = run_id or str(uuid.uuid4())
    started = utcnow()
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    given = loaded is not None
    probe = None
    try:
        t = time.perf_counter()
        if loaded is None:
            loaded = load() if load else load_checkpoint(ref, device=plan.config.device, **_load_options(plan))
        seconds["load"] = time.perf_counter() - t
        rows: Rows = {}
        if plan.config.geometry:
            t = time.perf_counter()
            probe = probe_for(plan, loaded.tokenizer)
            seconds["tokenize"] = time.perf_counter() - t
            rows, stage_seconds = _geometry(loaded, probe, plan, run_id, on_batch)
            seconds |= stage_seconds
        for m in plan.measurements:
            t = time.perf_counter()
            for table, extra in m(loaded, ref, plan.config).items():
                rows.setdefault(table, []).extend(extra)
            seconds[m.name] = time.perf_counter() - t
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
    rows = {"models": [models_row], "checkpoints": [ref.row()], **rows}
    if probe is not None and status == "ok":
        rows["probes"] = [probe.row]
    elapsed = time.perf_counter() - clock
    run = plan.run_row(
        ref,
        run_id,
        status,
        error=error,
        device=device_name(device) if device is not None else None,
        dtype=str(dtype).removeprefix("torch.") if dtype is not None else plan.dtype,
        hub_commit=commit,
        started_at=started,
        finished_at=utcnow(),
        stage_seconds={k: round(v, 3) for k, v in seconds.items()},
    )
    if probe is not None:
        run["probe"] = probe.id
    tokens = probe.tokens if probe is not None and status == "ok" else 0
    return CheckpointResult(ref, run_id, status, rows, run, error, tokens, elapsed)


def _load_options(plan: Plan) -> dict:
    """`load_checkpoint`'s options under `plan`, but the device."""
    return dict(
        dtype=plan.dtype,
        with_head=plan.config.loss or any(m.with_head for m in plan.measurements),
        tokenizer=plan.config.tokenizer or plan.series.tokenizer,
    )


def probe_for(plan: Plan, tokenizer) -> Probe:
    """The plan's probe texts tokenized by `tokenizer`, once per tokenizer (cached in the plan)."""
    from geowh.ingest.probes import tokenize_probe, tokenizer_fingerprint

    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint not in plan.probes:
        c = plan.config
        plan.probes[fingerprint] = tokenize_probe(
            plan.texts, tokenizer, n=c.n, max_len=c.max_len, min_len=c.min_len, seed=c.seed,
            tokenizer_name=plan.series.tokenizer or tokenizer.name_or_path,
        )
    return plan.probes[fingerprint]


def _geometry(loaded, probe: Probe, plan: Plan, run_id: str, on_batch) -> tuple[Rows, dict[str, float]]:
    """Features of every (layer, pooling) streamed into covariances → spectra and metrics rows."""
    import numpy as np
    import torch

    from geowh.ingest.extract import extract_features, parse_layers, parse_poolings
    from geowh.ingest.spectrum import Covariance

    config = plan.config
    layers = parse_layers(config.layers, loaded.n_layers)
    poolings = parse_poolings(config.pooling)
    keys = [(layer, pooling) for layer in layers for pooling in poolings]
    d, m = loaded.d_model, len(probe)
    full = {k: Covariance(d) for k in keys}
    k_parts = config.subsets
    if k_parts and m // k_parts < MIN_SUBSET_ROWS:  # the probe had fewer usable documents than --n
        raise InputError(f"--subsets {k_parts}: the probe has {m} usable sequences, {m // k_parts} per part; a part "
                         f"needs at least {MIN_SUBSET_ROWS}: use fewer parts, or a probe with more documents")
    part_of = np.random.default_rng(config.seed).permutation(m) % k_parts if k_parts else None
    parts = {k: [Covariance(d) for _ in range(k_parts)] for k in keys} if k_parts else {}
    saved = {k: np.zeros((m, d), dtype=np.float32) for k in keys} if config.save_features else {}

    nll, predicted = 0.0, 0
    t = time.perf_counter()
    for batch in extract_features(
        loaded.base,
        probe.ids,
        pad_id=loaded.tokenizer.pad_token_id,
        layers=layers,
        poolings=poolings,
        device=loaded.device,
        batch_size=config.batch_size,
        head=loaded.model.get_output_embeddings() if config.loss else None,
        on_batch=on_batch,
    ):
        indices = batch.indices
        nll, predicted = nll + batch.nll, predicted + batch.predicted
        for key, f in batch.features.items():  # f: (batch, d) on the device
            full[key].update(f)
            if k_parts:
                which = part_of[indices]
                for j in range(k_parts):
                    rows = np.flatnonzero(which == j)
                    if rows.size:
                        parts[key][j].update(f[torch.as_tensor(rows, device=f.device)])
            if saved:
                saved[key][indices] = f.float().cpu().numpy()
    seconds = {"forward": time.perf_counter() - t}

    t = time.perf_counter()
    rows: Rows = {"spectra": [], "metrics": []}
    ref = loaded.ref
    where = {"model": ref.model, "checkpoint": ref.label, "probe": probe.id}
    for key in keys:
        layer, pooling = key
        lam = full[key].eigenvalues()
        rows["spectra"].append(
            where | {"layer": layer, "pooling": pooling, "n_samples": full[key].n, "d": d,
                     "eigenvalues": lam.tolist(), "run_id": run_id}
        )
        for row in _metric_rows(lam, [p.eigenvalues() for p in parts.get(key, [])]):
            rows["metrics"].append(row | where | {"layer": layer, "pooling": pooling, "run_id": run_id})
    if config.loss:
        rows["metrics"].append(where | {
            "layer": None, "pooling": None, "metric": "probe_loss", "value": nll / max(predicted, 1),
            "stderr": None, "params": {"unit": "nats/token", "predicted_tokens": predicted}, "run_id": run_id,
        })
    if saved:
        folder = Path(config.save_features) / ref.model.replace("/", "--") / ref.label
        folder.mkdir(parents=True, exist_ok=True)
        for (layer, pooling), matrix in saved.items():
            np.save(folder / f"layer{layer}-{pooling}.npy", matrix)
    seconds["metrics"] = time.perf_counter() - t
    return rows, seconds


def _metric_rows(lam, subset_spectra: list) -> list[dict]:
    """Metric rows of a spectrum; with subsets, value = mean over subsets and stderr = its standard error."""
    import math

    import numpy as np

    from geowh.spectrum_math import compute_metrics

    values = compute_metrics(lam)
    if not subset_spectra:
        return [{"metric": v.metric, "value": v.value, "stderr": None, "params": v.params} for v in values]
    per_part = [compute_metrics(s) for s in subset_spectra]
    rows = []
    for i, v in enumerate(values):
        xs = np.array([part[i].value for part in per_part])
        k = len(xs)
        rows.append({
            "metric": v.metric,
            "value": float(xs.mean()),
            "stderr": float(xs.std(ddof=1) / math.sqrt(k)),
            "params": v.params | {"subsets": k, "full_probe": v.value, "subset_values": xs.tolist()},
        })
    return rows


# -- writing ---------------------------------------------------------------------------------------


def write_result(wh, result: CheckpointResult) -> None:
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


# -- the loop --------------------------------------------------------------------------------------


class CheckpointTally:
    """Counts over the `checkpoints` entries of a summary dataclass (ingest's, watch's)."""

    checkpoints: list[dict]

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
    """The probe set's name; None when geometry is off."""
    config_key: str
    db: str
    checkpoints: list[dict] = field(default_factory=list)
    """One entry per selected checkpoint: checkpoint, step, status (ok, failed, skipped), seconds, tokens_per_s, error."""



class Events:
    """What the engine reports while it runs. Every method does nothing here: the library is quiet.

    Subclass and override what you want to show (cli/ingest.py draws a progress bar with it):
    `planned` once with the checkpoints to compute, `started` before each, `batch` as its
    forward passes go, `finished` with its summary entry, `waiting` when another process holds
    the warehouse file (with who holds it).
    """

    def planned(self, todo: Sequence[CheckpointRef]) -> None:
        pass

    def started(self, ref: CheckpointRef) -> None:
        pass

    def batch(self, done: int, total: int) -> None:
        pass

    def finished(self, entry: dict) -> None:
        pass

    def waiting(self, holder: str) -> None:
        pass


@dataclass(frozen=True)
class Job:
    """One checkpoint to process, under the run id its `running` row was written with."""

    ref: CheckpointRef
    run_id: str


@dataclass
class Work:
    """`process_checkpoint` of one job under a plan: what an executor runs (picklable)."""

    plan: Plan
    on_batch: Callable[[int, int], None] | None = None

    def __call__(self, job: Job, load: Callable[[], Any] | None = None) -> CheckpointResult:
        return process_checkpoint(job.ref, self.plan, run_id=job.run_id, on_batch=self.on_batch, load=load)

    def lost(self, job: Job, why: str) -> CheckpointResult:
        """The failed result of a job whose process died before it could return one."""
        from geowh.warehouse import utcnow

        rows = {"models": [self.plan.series.models_row()], "checkpoints": [job.ref.row()]}
        run = self.plan.run_row(job.ref, job.run_id, "failed", error=why, finished_at=utcnow())
        return CheckpointResult(job.ref, job.run_id, "failed", rows, run, why)


class Executor(Protocol):
    """Where `process_checkpoint` runs. The driver alone writes: it calls nothing here that writes.

    `prepare(plan)` readies the workers and returns the plan as they will run it: its device
    checked and dtype resolved there (`resolved_here` in a worker), and possibly its probe
    tokenized. `map(work, jobs, started)` calls `started(job)` in the driver's process just
    before handing `job` out (the driver writes its `running` row there), runs `work(job)`
    (which returns the job's `CheckpointResult`) and yields the results, in any order, as they
    are done. A job whose `work` raises stops the run: the exception is raised from the iterator.
    A job whose process died yields `work.lost(job, why)`.
    """

    def prepare(self, plan: Plan) -> Plan: ...

    def map(self, work: Work, jobs: Sequence[Job], started: Callable[[Job], None]) -> Iterator[CheckpointResult]: ...


class Serial:
    """The default executor: one checkpoint after the other, in this process, the next one made
    ready meanwhile.

    With `preload`, a thread reads the next checkpoint's weights into host memory while this one
    computes, so that only the move to the device is left when its turn comes; without, the next
    hub checkpoint downloads meanwhile. `None` (auto) preloads when the plan's device is a GPU:
    on the CPU, reading the weights is the whole load, and a second model would only cost memory.
    """

    def __init__(self, preload: bool | None = None):
        self.preload = preload

    def prepare(self, plan: Plan) -> Plan:
        return resolved_here(plan)

    def preloading(self, plan: Plan) -> bool:
        if self.preload is not None:
            return self.preload
        from geowh.ingest.models import resolve_device

        return resolve_device(plan.config.device).type == "cuda"

    def map(self, work, jobs, started):
        refs = [job.ref for job in jobs]
        with _Preloader(refs, work.plan) if self.preloading(work.plan) else _Prefetcher(refs) as ahead:
            for i, job in enumerate(jobs):
                started(job)
                yield work(job, ahead.load(i))


def ingest(
    model: str,
    config: IngestConfig | None = None,
    selection: Selection = Selection(),
    *,
    measurements: Sequence[Measurement | Callable[..., Rows]] = (),
    force: bool = False,
    evict: bool = False,
    db: str | Path | None = None,
    lock_timeout: float | None = None,
    events: Events | None = None,
    executor: Executor | None = None,
) -> IngestSummary:
    """Ingest every selected checkpoint of `model` into the warehouse `db` (the Python `geowh ingest`).

    Completed checkpoints (an ok run with the same config key) are skipped unless `force`;
    a checkpoint that fails gets a failed `runs` row and the loop goes on. While another
    process holds the file, a computed checkpoint waits for it (`lock_timeout` seconds, by
    default as long as it takes), calling `events.waiting(holder)` when a wait begins. Ctrl-C or
    SIGTERM stops with the finished checkpoints written and the current one `interrupted`;
    `running` rows of `model` left by a killed process are marked `interrupted` first.
    `config` defaults to `IngestConfig()`; `selection` to every checkpoint.

    Example:
        config = IngestConfig(probe="docs.txt", n=500, max_len=128)
        summary = ingest("./my-run", config, Selection(checkpoints="log:8"), db="w.duckdb")
        summary.failed   # 0
    """
    from geowh.warehouse import Warehouse

    plan = plan_ingest(model, config or IngestConfig(), selection, measurements)
    events = events or Events()
    wh = Warehouse(db, lock_timeout=lock_timeout, on_wait=events.waiting)
    return run(plan, wh, force=force, evict=evict, events=events, executor=executor)


def run(
    plan: Plan,
    wh,
    *,
    force: bool = False,
    evict: bool = False,
    events: Events | None = None,
    executor: Executor | None = None,
) -> IngestSummary:
    """The driver: every checkpoint of `plan` not yet done, processed by `executor`, written here.

    Each checkpoint gets a `running` row before it is handed out and its rows in one
    transaction when its result comes back. A failed checkpoint is recorded and the run goes
    on. An exception (a bug, a full disk) or a signal stops the run: the checkpoints handed
    out and not written are recorded `failed` (with the error) or `interrupted`, then it is
    raised. A written checkpoint is never overwritten by that record.
    """
    events = events or Events()
    executor = executor or Serial()
    plan = executor.prepare(plan)
    _import_now(plan.series)
    summary = IngestSummary(plan.series.model, plan.texts.name if plan.texts else None, plan.config_key, str(wh.path))
    wh.close_stale_runs(plan.series.model)
    done = set() if force else wh.completed(plan.kind, plan.series.model, plan.config_key)
    todo = [r for r in plan.series.checkpoints if r.label not in done]
    for ref in plan.series.checkpoints:
        if ref.label in done:
            summary.checkpoints.append(_entry(ref, "skipped"))
    jobs = [Job(ref, str(uuid.uuid4())) for ref in todo]
    handed_out: dict[str, tuple[Job, Any]] = {}  # run_id → (job, started_at): running rows not yet finished
    events.planned(todo)

    def started(job: Job) -> None:
        events.started(job.ref)
        at = _now()
        handed_out[job.run_id] = (job, at)
        wh.write({"runs": [plan.run_row(job.ref, job.run_id, "running", started_at=at)]})

    writing = None
    results = executor.map(Work(plan, events.batch), jobs, started)
    try:
        for result in results:
            writing = result
            if result.run.get("started_at") is None:  # a lost job: its process died before it could say
                result.run["started_at"] = handed_out[result.run_id][1]
            write_result(wh, result)
            handed_out.pop(result.run_id, None)
            writing = None
            if result.ok and evict:
                from geowh.ingest.models import evict as evict_files

                evict_files(result.ref)
            entry = _entry(result.ref, result.status, result)
            summary.checkpoints.append(entry)
            events.finished(entry)
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

    from geowh.ingest.models import quiet_transformers

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


class _Prefetcher:
    """Downloads the next hub checkpoint in the background while this one computes."""

    def __init__(self, refs: Sequence[CheckpointRef]):
        self.refs = refs
        self.pool = None

    def __enter__(self):
        from huggingface_hub import constants

        if any(r.repo for r in self.refs) and not constants.HF_HUB_OFFLINE:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geowh-prefetch")
        return self

    def load(self, i: int) -> None:
        """Start the download of checkpoint i + 1; checkpoint i loads as it would without."""
        if self.pool is None or i + 1 >= len(self.refs) or self.refs[i + 1].repo is None:
            return
        ref = self.refs[i + 1]
        # A failed prefetch is not reported here: loading the checkpoint retries and reports it.
        self.pool.submit(_download, ref)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def _download(ref: CheckpointRef) -> None:
    from huggingface_hub import snapshot_download  # imported by _import_now in the main thread

    snapshot_download(ref.repo, revision=ref.revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])


class _Preloader:
    """Reads the next checkpoint into host memory while this one computes (`Serial(preload=True)`).

    Checkpoint i + 1 starts loading only once checkpoint i is on the device: at most one model
    waits in host memory, and the thread is never the first to import a model's code (a load in
    the main thread did). Its thread is a daemon: an interrupted run exits without waiting for
    it, and the model it was reading is released when it is done.
    """

    def __init__(self, refs: Sequence[CheckpointRef], plan: Plan):
        self.refs, self.plan = refs, plan
        self.ahead: Future | None = None  # checkpoint i + 1 on its way to host memory

    def __enter__(self):
        return self

    def load(self, i: int) -> Callable[[], Any]:
        """How `process_checkpoint` gets checkpoint i: from the thread, or read here when none
        read it (the first, or the one after a failure)."""

        def load():
            from geowh.ingest.models import load_checkpoint, to_device

            options = dict(device="cpu", **_load_options(self.plan))
            ahead, self.ahead = self.ahead, None
            try:
                host = ahead.result() if ahead else load_checkpoint(self.refs[i], **options)
            except BaseException:
                if ahead:  # a Ctrl-C while waiting: the thread's model is freed when it is done
                    ahead.add_done_callback(_release)
                raise
            loaded = to_device(host, self.plan.config.device)
            if i + 1 < len(self.refs):
                self.ahead = _in_thread(load_checkpoint, self.refs[i + 1], **options)
            return loaded

        return load

    def __exit__(self, *exc):
        if self.ahead is not None:  # the run stopped before its turn
            self.ahead.add_done_callback(_release)
            self.ahead = None


def _in_thread(fn: Callable, *args, **kwargs) -> Future:
    """`fn(*args, **kwargs)` in a daemon thread: its result, or its exception, in the future."""
    future: Future = Future()

    def call():
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # a CheckpointError or a bug alike: raised where the result is taken
            future.set_exception(e)

    threading.Thread(target=call, name="geowh-preload", daemon=True).start()
    return future


def _release(future: Future) -> None:
    if future.exception() is None:
        future.result().release()
