"""What every checkpoint of one run shares: the `Plan`, the `Measurement`s in it, one checkpoint's result.

`plan_ingest(model, config, selection, measurements, options)` resolves the series and builds
the measurements: those of the registry (ingest/measurements/) that `config` and `options` ask
for, then those given. Every option is checked here (`IngestConfig` checks itself when built,
each measurement when it is built) or, for the device, by the executor's `prepare`
(`resolved_here`), before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from geowh.errors import InputError
from geowh.ingest.config import IngestConfig, Selection
from geowh.ingest.sources.series import CheckpointRef, Series
from geowh.progress import Event, Progress, silent
from geowh.warehouse.runs import config_key, run_row

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from geowh.ingest.sources.models import Loaded
    from geowh.warehouse import Warehouse

Rows = dict[str, list[dict]]


@dataclass
class Meter:
    """What a measurement reports while it measures one checkpoint: its progress (`progress`, the
    run's: geowh/progress.py; `batch` tells how many of its tokens went through the model), the
    tokens it read (the summary's tokens/s) and the seconds of its own stages (runs.stage_seconds,
    next to the engine's time of each measurement)."""

    progress: Progress = silent
    tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def batch(self, done: int, total: int) -> None:
        """Forward passes so far: `done` of `total` tokens (a `bar` event of "tokens")."""
        self.progress(Event("bar", "tokens", done=done, total=total))


@dataclass(eq=False)
class Measurement:
    """A per-checkpoint measurement: rows of the loaded checkpoint, written in the checkpoint's transaction.

    The simple form: `Measurement(name, fn, config)`, whose `fn(loaded, ref, config) -> {table:
    rows}` gets the loaded checkpoint, its `CheckpointRef` and the run's `IngestConfig`. A plain
    callable works too (its name is its name). The registry's measurements (ingest/measurements/:
    geometry, memorization) subclass this class and override `measure`, and `start` and `ready`
    where they need them.

    `name` names the run (runs.kind joins the names) and its stage in runs.stage_seconds;
    `config` is what decides its numbers: it joins the run's config and its key, so a rerun with
    other settings is not skipped; `with_head` loads the causal LM instead of the base model;
    `probe` is what it reads (a probe set, a task): runs.probe of a run that writes no `probes`
    row. Rows without `run_id` get the run's id where the table has that column. A measurement
    raises `CheckpointError` for a checkpoint it cannot measure (that checkpoint fails, the run
    goes on); anything else it raises stops the run with its traceback. It is pickled to the
    workers of a distributed run (`__getstate__` leaves behind what they need not carry).
    """

    name: str
    fn: Callable[..., Rows] | None = None
    config: dict = field(default_factory=dict)
    with_head: bool = False
    probe: str | None = None

    def measure(self, loaded: Loaded, ref: CheckpointRef, config: IngestConfig, meter: Meter) -> Rows:
        """The rows of one loaded checkpoint; `meter` takes its progress, tokens and stage seconds."""
        assert self.fn is not None, f"measurement {self.name} has no fn and does not override measure()"
        return self.fn(loaded, ref, config)

    def start(self, plan: Plan, wh: Warehouse | None) -> Rows:
        """Called once by the driver before the run hands out its first checkpoint (`wh` may be
        None: a live measurement without a warehouse). Returns rows that belong to no checkpoint
        (a cache the measurement filled), which the driver writes; it must not write itself."""
        return {}

    def ready(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Called once where the checkpoints run (on a Ray worker, by `Executor.prepare`) with the
        first checkpoint's tokenizer: prepare what every checkpoint would otherwise redo."""


def as_measurement(m: Measurement | Callable[..., Rows]) -> Measurement:
    if isinstance(m, Measurement):
        return m
    name = getattr(m, "__name__", type(m).__name__)
    return Measurement(name, m, dict(getattr(m, "config", {}) or {}), bool(getattr(m, "with_head", False)))


@dataclass
class Plan:
    """What every checkpoint of one run shares."""

    series: Series
    config: IngestConfig
    dtype: str | None
    """Resolved dtype name (auto → bfloat16 on a capable GPU, float32 otherwise); None until an
    executor's `prepare` resolves it where the checkpoints will run (the config key needs it)."""
    measurements: tuple[Measurement, ...] = ()

    @property
    def kind(self) -> str:
        """runs.kind: the measurements' names (geometry, memorization, geometry+memorization)."""
        return "+".join(m.name for m in self.measurements)

    @property
    def config_dict(self) -> dict:
        d = asdict(self.config)
        d.update(kind=self.kind, dtype=self.dtype, requested_dtype=self.config.dtype)
        d["measurements"] = {m.name: m.config for m in self.measurements}
        d["definitions"] = self.definitions
        return d

    @property
    def definitions(self) -> dict[str, str] | None:
        """{metric: fingerprint} of the metric registry a geometry run measures with; None without geometry."""
        from geowh.spectrum_math import definitions

        return definitions() if self.config.geometry else None

    @property
    def config_key(self) -> str:
        """The hash that decides "already done": the measurements' configs, the resolved dtype, the
        tokenizer and, for geometry, the metric definitions (`settings_key` is the same without them)."""
        return self._key(with_definitions=True)

    @property
    def settings_key(self) -> str:
        """The config key without the metric definitions: how a re-ingest finds checkpoints measured
        by older definitions."""
        return self._key(with_definitions=False)

    def _key(self, with_definitions: bool) -> str:
        keyed = {"kind": self.kind, "dtype": self.dtype, "tokenizer": self.config.tokenizer,
                 "measurements": {m.name: m.config for m in self.measurements}}
        if self.config.geometry and with_definitions:  # another definition is another result (a commit is not: runs.code_commit)
            keyed["definitions"] = self.definitions_key
        return config_key(keyed)

    @property
    def definitions_key(self) -> str | None:
        """`runs.definitions`: one fingerprint of `definitions`."""
        from geowh.spectrum_math import definitions_fingerprint

        return definitions_fingerprint() if self.config.geometry else None

    def run_row(self, ref: CheckpointRef, run_id: str, status: str, **fields: Any) -> dict:
        probe = next((m.probe for m in self.measurements if m.probe), None)
        return run_row(run_id, self.kind, ref.model, status, checkpoint=ref.label, probe=probe,
                       config_key=self.config_key, config=self.config_dict | {"settings_key": self.settings_key},
                       definitions=self.definitions_key) | fields


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
    options: Mapping[str, Any] | None = None,
) -> Plan:
    """Resolve the series and build the measurements; fix the config. Loads no weights.

    The registry's measurements that `config` and `options` (their CLI options by name, such as
    `{"memorization": "triviaqa", "index": "indexes/pile"}`) ask for come first, then those of
    `measurements` (a registry name given there is not built again). The dtype stays
    unresolved: `auto` depends on the device of the process that computes, which for a
    distributed run is not this one (`Executor.prepare`, `resolved_here`).
    """
    from geowh.ingest.measurements import build, registry
    from geowh.ingest.sources.series import require_hub, resolve_series

    given = tuple(as_measurement(m) for m in measurements)
    series = resolve_series(model, revisions=list(selection.revisions) if selection.revisions else None,
                            name=selection.name, checkpoints=selection.checkpoints)
    if any(r.repo for r in series.checkpoints):
        require_hub(f"download checkpoints of {series.model}")
    built = build(config, options or {}, skip={m.name for m in given})
    if not built and not given:
        raise InputError("nothing to measure: geometry is off and no measurement was given")
    # Registry order whoever asked (`--generate` or measurements=[Generation(...)]): runs.kind,
    # and so the config key, of the same work is the same from the CLI and from Python.
    order = list(registry())
    ranked = sorted((*built, *given), key=lambda m: order.index(m.name) if m.name in order else len(order))
    return Plan(series, config, None, tuple(ranked))


def resolved_here(plan: Plan) -> Plan:
    """`plan` with its device checked and its dtype resolved for this process's device."""
    from dataclasses import replace

    from geowh.ingest.sources.models import dtype_name, resolve_device, resolve_dtype

    dtype = resolve_dtype(plan.config.dtype, resolve_device(plan.config.device))
    return replace(plan, dtype=dtype_name(dtype))


def load_options(plan: Plan) -> dict:
    """`load_checkpoint`'s options under `plan`, but the device."""
    return dict(
        dtype=plan.dtype,
        with_head=plan.config.loss or any(m.with_head for m in plan.measurements),
        tokenizer=plan.config.tokenizer or plan.series.tokenizer,
    )
