"""`geowh ingest`: every checkpoint of a series → probe features → spectra and metrics.

Three parts, kept apart so that a later multi-GPU ingest can run the work in many processes
while one process writes:

- `plan_ingest` resolves the series, loads the probe texts and fixes the config (and its key);
- `process_checkpoint(ref, plan)` does the work for one checkpoint and RETURNS a
  `CheckpointResult` holding every row to write (failures included: status and error);
- `write_result(wh, result)` writes those rows and the `runs` row in one transaction.

`ingest(...)` loops over the checkpoints: completed ones are skipped (resume), failures are
recorded and the loop goes on, and the `IngestSummary` says what happened.

Other measurements join the same transaction through `measurements`: callables
`(loaded, ref, config) -> {table: rows}` run on the loaded checkpoint after the geometry.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geowh import __version__
from geowh.errors import CheckpointError, InputError
from geowh.ingest.probes import DEFAULT_MAX_LEN, DEFAULT_MIN_LEN, DEFAULT_N, DEFAULT_SEED, Probe, ProbeTexts
from geowh.ingest.series import CheckpointRef, Series
from geowh.signals import interrupted_by
from geowh.warehouse.runs import this_process

KIND = "geometry"


@dataclass(frozen=True)
class IngestConfig:
    """Every setting of an ingest. Those in `key_fields` decide whether a result can be reused."""

    probe: str = "fineweb"
    n: int = DEFAULT_N
    max_len: int = DEFAULT_MAX_LEN
    min_len: int = DEFAULT_MIN_LEN
    seed: int = DEFAULT_SEED
    layers: str = "last"
    pooling: str = "last"
    subsets: int = 0
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    tokenizer: str | None = None
    save_features: str | None = None
    loss: bool = False

    # device, batch size and where features are saved do not change the numbers.
    key_fields = ("probe", "n", "max_len", "min_len", "seed", "layers", "pooling", "subsets", "dtype", "tokenizer", "loss")

    def __post_init__(self) -> None:
        """Refuse a setting that cannot work before anything is loaded or written."""
        from geowh.ingest.extract import parse_poolings
        from geowh.ingest.models import DTYPES

        for option, value, least in (("--n", self.n, 1), ("--max-len", self.max_len, 1), ("--min-len", self.min_len, 0),
                                     ("--seed", self.seed, 0), ("--batch-size", self.batch_size, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise InputError(f"{option} {value}: give a whole number of at least {least}")
        if self.subsets == 1 or self.subsets < 0:
            raise InputError(f"--subsets {self.subsets}: K needs K ≥ 2 disjoint parts (0 = off)")
        if self.subsets > self.n:
            raise InputError(f"--subsets {self.subsets}: more parts than the --n {self.n} probe sequences")
        layers = self.layers.strip()
        items = [x.strip() for x in layers.split(",")]
        if layers not in ("last", "all") and not (all(x.lstrip("-").isdigit() for x in items) and items):
            raise InputError(f"--layers {self.layers!r}: use last, all or a list of indices such as 0,6,12")
        parse_poolings(self.pooling)
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype}: use one of {', '.join(DTYPES)}")
        if not str(self.probe).strip():
            raise InputError("--probe is empty: give fineweb, wikitext, or a .txt/.jsonl/.parquet file")


Rows = dict[str, list[dict]]


@dataclass(frozen=True)
class Measurement:
    """Another measurement on the loaded checkpoint, written in the checkpoint's transaction.

    `fn(loaded, ref, config) -> {table: rows}`; rows without `run_id` get the run's id where
    the table has that column. `config` joins the run's config and its key (so a rerun with
    other settings is not skipped); `with_head` loads the causal LM instead of the base model.
    A plain callable works too (its name is its config).
    """

    name: str
    fn: Callable[..., Rows]
    config: dict = field(default_factory=dict)
    with_head: bool = False

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
    texts: ProbeTexts
    config: IngestConfig
    dtype: str
    """Resolved dtype name (auto → bfloat16 on a capable GPU, float32 otherwise)."""
    measurements: tuple[Measurement, ...] = ()
    probes: dict[str, Probe] = field(default_factory=dict)
    """Tokenized probes by tokenizer fingerprint (checkpoints of a series share one)."""

    @property
    def config_dict(self) -> dict:
        d = asdict(self.config)
        d.update(kind=KIND, dtype=self.dtype, requested_dtype=self.config.dtype, texts_hash=self.texts.texts_hash)
        d["measurements"] = {m.name: m.config for m in self.measurements}
        return d

    @property
    def config_key(self) -> str:
        d = self.config_dict
        keyed = {k: d[k] for k in IngestConfig.key_fields} | {
            "probe": self.texts.name,  # a file's name, not the path it was given by: the texts hash says the rest
            "kind": KIND,
            "dtype": self.dtype,
            "texts_hash": self.texts.texts_hash,
            "measurements": d["measurements"],
        }
        return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def run_row(self, ref: CheckpointRef, run_id: str, status: str, **fields: Any) -> dict:
        import torch
        import transformers

        return {
            "run_id": run_id,
            "kind": KIND,
            "model": ref.model,
            "checkpoint": ref.label,
            "config_key": self.config_key,
            "config": self.config_dict,
            "status": status,
            "geowh_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
        } | this_process() | fields


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
    *,
    checkpoints: str = "all",
    revisions: Sequence[str] | None = None,
    name: str | None = None,
    measurements: Sequence[Measurement | Callable[..., Rows]] = (),
) -> Plan:
    """Resolve the series and probe texts; fix the config and its key. Loads no weights."""
    from geowh.ingest.models import resolve_device, resolve_dtype
    from geowh.ingest.probes import load_texts
    from geowh.ingest.series import require_hub, resolve_series

    series = resolve_series(model, revisions=revisions, name=name, checkpoints=checkpoints)
    if any(r.repo for r in series.checkpoints):
        require_hub(f"download checkpoints of {series.model}")
    texts = load_texts(config.probe, n=config.n)
    dtype = str(resolve_dtype(config.dtype, resolve_device(config.device))).removeprefix("torch.")
    return Plan(series, texts, config, dtype, tuple(as_measurement(m) for m in measurements))


# -- one checkpoint ------------------------------------------------------------------------------


def process_checkpoint(
    ref: CheckpointRef,
    plan: Plan,
    *,
    run_id: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    loaded=None,
) -> CheckpointResult:
    """Load `ref`, extract features, compute spectra and metrics, run the measurements.

    Returns a result holding all rows, or a failed result with the error for a checkpoint
    that cannot be processed (download, weights, memory, NaN). A config error (InputError)
    is raised: it would fail every checkpoint alike.

    `loaded` measures a model already in memory instead of loading `ref` (a `Loaded` whose
    `ref` is `ref`; `geowh.integrations` passes the model in training): the rows are those
    an ingest of the same weights writes, and the model is left as it was, not released.
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
        loaded = loaded or load_checkpoint(
            ref,
            device=plan.config.device,
            dtype=plan.dtype,
            with_head=plan.config.loss or any(m.with_head for m in plan.measurements),
            tokenizer=plan.config.tokenizer or plan.series.tokenizer,
        )
        seconds["load"] = time.perf_counter() - t
        t = time.perf_counter()
        probe = _probe_for(plan, loaded.tokenizer)
        seconds["tokenize"] = time.perf_counter() - t
        rows, stage_seconds = _geometry(loaded, probe, plan, run_id, on_batch)
        seconds |= stage_seconds
        for m in plan.measurements:
            t = time.perf_counter()
            for table, extra in m(loaded, ref, plan.config).items():
                rows.setdefault(table, []).extend(extra)
            seconds[m.name] = time.perf_counter() - t
        status, error = "ok", None
    except InputError:
        raise
    except CheckpointError as e:
        status, error, rows = "failed", str(e), {}
    except Exception as e:  # anything else still fails only this checkpoint, recorded with its type
        if interrupted_by(e):  # a Ctrl-C that a library wrapped in an error of its own
            raise
        status, error, rows = "failed", f"{type(e).__name__}: {e}", {}
    finally:
        if loaded is not None:
            device, dtype = loaded.device, loaded.dtype
            models_row = plan.series.models_row() | loaded.models_row()
            models_row["tokenizer"] = models_row["tokenizer"] or loaded.tokenizer.name_or_path
            if not given:
                loaded.release()
        else:
            device, dtype, models_row = None, None, plan.series.models_row()
    rows = {"models": [models_row], "checkpoints": [ref.row()], **rows}
    if probe is not None and status == "ok":
        rows["probes"] = [probe.row]
    elapsed = time.perf_counter() - clock
    run = plan.run_row(
        ref,
        run_id,
        status,
        probe=probe.id if probe is not None else None,
        error=error,
        device=device_name(device) if device is not None else None,
        dtype=str(dtype).removeprefix("torch.") if dtype is not None else plan.dtype,
        started_at=started,
        finished_at=utcnow(),
        stage_seconds={k: round(v, 3) for k, v in seconds.items()},
    )
    tokens = probe.tokens if probe is not None and status == "ok" else 0
    return CheckpointResult(ref, run_id, status, rows, run, error, tokens, elapsed)


def _probe_for(plan: Plan, tokenizer) -> Probe:
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


@dataclass
class IngestSummary:
    """What an ingest did, checkpoint by checkpoint."""

    model: str
    probe: str
    config_key: str
    db: str
    checkpoints: list[dict] = field(default_factory=list)
    """One entry per selected checkpoint: checkpoint, step, status (ok, failed, skipped), seconds, tokens_per_s, error."""

    def count(self, status: str) -> int:
        return sum(1 for c in self.checkpoints if c["status"] == status)

    @property
    def failed(self) -> int:
        return self.count("failed")

    def to_dict(self) -> dict:
        return asdict(self) | {"ok": self.count("ok"), "failed": self.failed, "skipped": self.count("skipped")}


def ingest(
    model: str,
    *,
    probe: str = "fineweb",
    n: int = DEFAULT_N,
    max_len: int = DEFAULT_MAX_LEN,
    min_len: int = DEFAULT_MIN_LEN,
    seed: int = DEFAULT_SEED,
    checkpoints: str = "all",
    revisions: Sequence[str] | None = None,
    name: str | None = None,
    layers: str = "last",
    pooling: str = "last",
    subsets: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    tokenizer: str | None = None,
    save_features: str | Path | None = None,
    loss: bool = False,
    force: bool = False,
    evict: bool = False,
    quiet: bool = False,
    db: str | Path | None = None,
    measurements: Sequence[Measurement | Callable[..., Rows]] = (),
    lock_timeout: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Ingest every selected checkpoint of `model` into the warehouse `db` (the Python `geowh ingest`).

    Completed checkpoints (an ok run with the same config key) are skipped unless `force`;
    a checkpoint that fails gets a failed `runs` row and the loop goes on. While another
    process holds the file, a computed checkpoint waits for it (`lock_timeout` seconds, by
    default as long as it takes), calling `on_wait(holder)` when a wait begins. Ctrl-C or
    SIGTERM stops with the finished checkpoints written and the current one `interrupted`;
    `running` rows of `model` left by a killed process are marked `interrupted` first.

    Example:
        summary = ingest("./my-run", probe="docs.txt", n=500, max_len=128, db="w.duckdb")
        summary.failed   # 0
    """
    from geowh.warehouse import Warehouse

    config = IngestConfig(
        probe=str(probe), n=n, max_len=max_len, min_len=min_len, seed=seed, layers=layers, pooling=pooling,
        subsets=subsets, device=device, dtype=dtype, batch_size=batch_size, tokenizer=tokenizer,
        save_features=str(save_features) if save_features else None, loss=loss,
    )
    plan = plan_ingest(model, config, checkpoints=checkpoints, revisions=revisions, name=name, measurements=measurements)
    _import_now(plan.series)
    wh = Warehouse(db, lock_timeout=lock_timeout, on_wait=on_wait)
    summary = IngestSummary(plan.series.model, plan.texts.name, plan.config_key, str(wh.path))
    wh.close_stale_runs(plan.series.model)
    done = set() if force else wh.completed(KIND, plan.series.model, plan.config_key)
    todo = [r for r in plan.series.checkpoints if r.label not in done]
    for ref in plan.series.checkpoints:
        if ref.label in done:
            summary.checkpoints.append(_entry(ref, "skipped"))

    with IngestProgress(len(todo), quiet=quiet) as progress, _Prefetcher(todo) as prefetch:
        for i, ref in enumerate(todo):
            prefetch.next_after(i)
            run_id, started, result = str(uuid.uuid4()), _now(), None
            progress.start(ref)
            try:
                wh.write({"runs": [plan.run_row(ref, run_id, "running", started_at=started)]})
                result = process_checkpoint(ref, plan, run_id=run_id, on_batch=progress.batch)
                write_result(wh, result)
            except BaseException as e:  # config errors, a full disk, Ctrl-C: the attempt is recorded, then we stop
                stop = interrupted_by(e)
                if stop is not None and result is not None and stop.after_block:
                    # the signal waited for write_result's commit: this checkpoint is stored
                    summary.checkpoints.append(_entry(ref, result.status, result))
                    stop.detail = f"{summary.count('ok')} checkpoint(s) of this run written; run the same command again to resume"
                    raise stop from None
                status, why = ("interrupted", f"stopped by {stop}") if stop else ("failed", str(e))
                _record_end(wh, plan.run_row(ref, run_id, status, error=why, started_at=started, finished_at=_now()))
                if stop is None:
                    raise
                stop.detail = (
                    f"{summary.count('ok')} checkpoint(s) of this run written, {ref.label} recorded as interrupted; "
                    "run the same command again to resume"
                )
                raise stop from None
            if result.ok and evict:
                from geowh.ingest.models import evict as evict_files

                evict_files(ref)
            entry = _entry(ref, result.status, result)
            summary.checkpoints.append(entry)
            progress.finish(entry)
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

    def next_after(self, i: int) -> None:
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


class IngestProgress:
    """Rich progress on stderr: checkpoints (with ETA) and the tokens of the current one."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.quiet = total, quiet
        self.progress = None

    def __enter__(self):
        if self.quiet:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
        )
        self.progress.__enter__()
        self.checkpoints = self.progress.add_task("checkpoints", total=self.total)
        self.tokens = self.progress.add_task("tokens", total=None, visible=False)
        return self

    def start(self, ref: CheckpointRef) -> None:
        if self.progress:
            self.progress.reset(self.tokens, total=None, visible=True, description=f"{ref.label} tokens")

    def batch(self, done: int, total: int) -> None:
        if self.progress:
            self.progress.update(self.tokens, completed=done, total=total)

    def finish(self, entry: dict) -> None:
        if not self.progress:
            return
        self.progress.advance(self.checkpoints)
        if entry["status"] == "ok":
            self.progress.console.print(
                f"[green]ok[/] {entry['checkpoint']}  {entry['seconds']} s  {entry['tokens_per_s']} tokens/s"
            )
        else:
            self.progress.console.print(f"[red]failed[/] {entry['checkpoint']}: {entry['error']}", highlight=False)

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)
