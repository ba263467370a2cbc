"""What every checkpoint of one ingest shares: the `Plan`, the measurements in it, one checkpoint's result.

`plan_ingest(model, config, selection, measurements)` resolves the series, loads the probe texts
and fixes the config. Every option is checked here (`IngestConfig` checks itself when built) or,
for the device, by the executor's `prepare` (`resolved_here`), before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from geowh.errors import InputError
from geowh.ingest.config import IngestConfig, Selection
from geowh.ingest.sources.probes import Probe, ProbeTexts
from geowh.ingest.sources.series import CheckpointRef, Series
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
        d["definitions"] = self.definitions
        return d

    @property
    def definitions(self) -> dict[str, str] | None:
        """{metric: fingerprint} of the metric registry a geometry run measures with; None without geometry."""
        from geowh.spectrum_math import definitions

        return definitions() if self.config.geometry else None

    @property
    def config_key(self) -> str:
        """The hash that decides "already done": the settings that change the numbers and, for
        geometry, the metric definitions (`settings_key` is the same without them)."""
        return self._key(with_definitions=True)

    @property
    def settings_key(self) -> str:
        """The config key without the metric definitions: the key of runs written before geowh
        recorded definitions, and how a re-ingest finds checkpoints measured by older ones."""
        return self._key(with_definitions=False)

    def _key(self, with_definitions: bool) -> str:
        d = self.config_dict
        if self.config.geometry:
            keyed = {k: d[k] for k in IngestConfig.key_fields} | {
                "probe": self.texts.name,  # a file's name, not the path it was given by: the texts hash says the rest
                "texts_hash": self.texts.texts_hash,
            }
        else:
            keyed = {"tokenizer": self.config.tokenizer}
        keyed |= {"kind": self.kind, "dtype": self.dtype, "measurements": d["measurements"]}
        if self.config.geometry and with_definitions:  # another definition is another result (a commit is not: runs.code_commit)
            keyed["definitions"] = self.definitions_key
        return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def definitions_key(self) -> str | None:
        """`runs.definitions`: one fingerprint of `definitions`."""
        from geowh.spectrum_math import definitions_fingerprint

        return definitions_fingerprint() if self.config.geometry else None

    def run_row(self, ref: CheckpointRef, run_id: str, status: str, **fields: Any) -> dict:
        probe = next((m.probe for m in self.measurements if m.probe), None) if not self.config.geometry else None
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
) -> Plan:
    """Resolve the series and probe texts; fix the config. Loads no weights.

    The dtype stays unresolved: `auto` depends on the device of the process that computes,
    which for a distributed run is not this one (`Executor.prepare`, `resolved_here`).
    """
    from geowh.ingest.sources.probes import load_texts
    from geowh.ingest.sources.series import require_hub, resolve_series

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

    from geowh.ingest.sources.models import resolve_device, resolve_dtype

    dtype = resolve_dtype(plan.config.dtype, resolve_device(plan.config.device))
    return replace(plan, dtype=str(dtype).removeprefix("torch."))


def load_options(plan: Plan) -> dict:
    """`load_checkpoint`'s options under `plan`, but the device."""
    return dict(
        dtype=plan.dtype,
        with_head=plan.config.loss or any(m.with_head for m in plan.measurements),
        tokenizer=plan.config.tokenizer or plan.series.tokenizer,
    )
