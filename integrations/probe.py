"""`GeometryProbe`: the geometry of a model in memory, measured as `geowh ingest` measures a checkpoint.

The probe texts are tokenized once, when the probe is built; each `measure(model, step)` runs
them through the model (eval mode, no gradients), and returns RankMe, αReQ and the other
metrics of the last selected layer. With a warehouse, it writes the rows an ingest of the
same weights would write (`ingest.engine.run.process_checkpoint` makes them, from the model given
instead of loaded): model = `name`, checkpoint `step{N}`, same probe id and config key, so
`geowh sql`, `phases` and `plot` treat live measurements and ingested checkpoints alike.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geowh.errors import CheckpointError, InputError
from geowh.ingest.config import IngestConfig
from geowh.signals import interrupted_by
from geowh.warehouse import Warehouse, as_warehouse

DEFAULT_N = 1000
DEFAULT_MAX_LEN = 512
LOGGED = ("rankme", "alpha_req")
"""The metrics the integrations add to a trainer's logs (and so to W&B, MLflow, TensorBoard …)."""


class GeometryProbe:
    """A fixed probe, tokenized once, to measure a model's representation geometry while it trains.

    `probe` is what `geowh ingest --probe` takes (fineweb, wikitext, or a .txt/.jsonl/.parquet
    file) and `settings` are `IngestConfig` fields (`n`, `max_len`, `layers`, `pooling`,
    `min_len`, `seed`, `batch_size`: what the ingest options of the same names mean; `n` and
    `max_len` default to DEFAULT_N and DEFAULT_MAX_LEN here, a probe cheap enough to run during
    training); or `probe` is a whole `IngestConfig`. Rows go to the warehouse `db` when one is
    given; `model`, when given, is checked now (`check`).

    Example:
        probe = GeometryProbe(tokenizer, "held_out.txt", db="w.duckdb", name="my-run", n=500, max_len=256)
        for step in range(1, steps + 1):
            train_step(model)
            if step % 1000 == 0:
                probe.measure(model, step, tokens=step * batch * seq_len)   # {'rankme': …, 'alpha_req': …}
    """

    def __init__(
        self,
        tokenizer,
        probe: str | Path | IngestConfig,
        db: str | Path | Warehouse | None = None,
        name: str = "live",
        *,
        model=None,
        **settings: Any,
    ):
        from dataclasses import fields

        from geowh.ingest.measurements import build
        from geowh.warehouse import canonical_model

        if not name or not str(name).strip():
            raise InputError("GeometryProbe needs a model name for the warehouse: name='my-run'")
        if isinstance(probe, IngestConfig):
            if settings:
                raise InputError(
                    f"GeometryProbe takes an IngestConfig or its settings, not both ({', '.join(settings)})"
                )
            self.config = probe
        else:
            allowed = {f.name for f in fields(IngestConfig)} - {"probe"}
            unknown = sorted(set(settings) - allowed)
            if unknown:
                raise InputError(f"GeometryProbe: unknown setting(s) {', '.join(unknown)}; give IngestConfig fields "
                                 "such as n, max_len, layers, pooling")
            self.config = IngestConfig(probe=str(probe), **({"n": DEFAULT_N, "max_len": DEFAULT_MAX_LEN} | settings))
        self.name = canonical_model(str(name))
        self.wh = None
        if db is not None:
            self.wh = as_warehouse(db)
            with self.wh.connect():  # created (or migrated) now: a bad path fails here, not mid-training
                pass
        # The registry's measurements that the config asks for (geometry), as `geowh ingest` builds them.
        self.measurements = tuple(build(self.config, {}))
        # A copy, so that giving it a pad token (as loading a checkpoint does) changes nothing in the training.
        self.tokenizer = copy.deepcopy(tokenizer)
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise InputError("the tokenizer has neither a pad nor an EOS token to pad the probe with")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        for m in self.measurements:
            m.ready(self.tokenizer)  # the probe tokenized here, once
        [geometry] = [m for m in self.measurements if m.name == "geometry"]
        from geowh.ingest.measurements.geometry import Geometry

        assert isinstance(geometry, Geometry)
        self.probe = geometry.probe_for(self.tokenizer)
        """The tokenized probe (the ids every measurement feeds the model)."""
        self.checked: set[int] = set()
        """id() of the models `check` has passed."""
        if model is not None:
            self.check(model)

    def check(self, model) -> None:
        """Refuse, with an InputError that says what to do, a model this probe cannot measure.

        Run before training spends a step (`GeometryCallback` does at `on_train_begin`; `measure`
        does on its first call): the probe's token ids, padding included, must be rows of the
        model's input embeddings (a tokenizer larger than the model raised IndexError inside the
        forward pass); its longest sequence must fit the model's positions; the weights must be
        materialized on a device (not `meta`).
        """
        parameter = next(model.parameters(), None)
        if parameter is None:
            raise InputError(f"{type(model).__name__} has no parameters: give GeometryProbe the transformers model")
        if parameter.device.type == "meta":
            raise InputError(f"the weights of {type(model).__name__} are on the meta device (not loaded): "
                             "measure the model once its weights are materialized on a CPU or GPU")
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        rows = getattr(embeddings, "num_embeddings", None)
        top = max([max(ids) for ids in self.probe.ids if ids] + [self.tokenizer.pad_token_id])
        if rows is not None and top >= rows:
            raise InputError(
                f"the tokenizer gives the probe token id {top:,}, but the model embeds only {rows:,} tokens "
                f"(ids 0–{rows - 1:,}): pass the tokenizer the model was built for, or resize its embeddings "
                "(model.resize_token_embeddings(len(tokenizer))) before training"
            )
        config = getattr(model, "config", None)
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        longest = max(len(ids) for ids in self.probe.ids)
        if isinstance(positions, int) and longest > positions:
            raise InputError(
                f"the probe has sequences of {longest:,} tokens, but the model takes at most {positions:,} positions: "
                f"pass max_len={positions} (or less)"
            )
        self.checked.add(id(model))

    def _plan(self, dtype: str):
        from geowh.ingest.engine.plan import Plan
        from geowh.ingest.sources.series import Series

        # A local series: what `geowh ingest` of the run's saved checkpoints would call it.
        return Plan(Series(self.name, "local", ()), self.config, dtype, self.measurements)

    def measure(self, model, step: int, tokens: float | None = None) -> dict[str, Any]:
        """Measure `model` (a transformers model, in training or not) at `step`; write the rows when `db` is set.

        Returns `{"step", "tokens", "checkpoint", "probe", "layer", "pooling", "seconds", "rankme",
        "alpha_req", …}` (the metrics of the last selected layer, first pooling). The model is
        left in the mode it was in, no gradient is computed, and the random state of torch,
        Python and NumPy is as before. Raises CheckpointError when the features cannot be
        computed (NaN, out of memory) or the measurement fails in any other way (its error is
        kept); the failed run is recorded when `db` is set. A step that is not a whole number
        ≥ 0, or a model `check` refuses, is an InputError, and nothing is recorded.
        """
        import math

        from geowh.ingest.engine.run import process_checkpoint, write_result
        from geowh.ingest.sources.models import Loaded, dtype_name
        from geowh.ingest.sources.series import CheckpointRef

        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) \
                or step < 0 or step != int(step):
            raise InputError(f"step={step!r}: a step is a whole number ≥ 0 (the optimizer updates so far)")
        if tokens is not None and not (isinstance(tokens, (int, float)) and math.isfinite(tokens) and tokens >= 0):
            raise InputError(f"tokens={tokens!r}: the tokens seen are a number ≥ 0, or None")
        if id(model) not in self.checked:
            self.check(model)
        parameter = next(model.parameters())
        dtype = dtype_name(parameter.dtype)
        ref = CheckpointRef(self.name, f"step{int(step)}", int(step), float(tokens) if tokens is not None else None)
        loaded = Loaded(model, self.tokenizer, parameter.device, parameter.dtype, ref)
        plan = self._plan(dtype)
        try:
            with _inference(model):
                result = process_checkpoint(ref, plan, loaded=loaded)
        except Exception as e:
            # Not a CheckpointError: a bug or a model geowh does not know. In a training, a
            # measurement must never be what stops it: the attempt is recorded as failed, with
            # its error, and reported as a CheckpointError the callbacks log and move past.
            if interrupted_by(e) is not None:
                raise
            result = _failed(plan, ref, f"{type(e).__name__}: {e}")
        if self.wh is not None:
            write_result(self.wh, result)
        if not result.ok:
            raise CheckpointError(f"geometry of {self.name} at step {step} failed: {result.error}")
        return summarize(result)


def _failed(plan, ref, error: str):
    """A failed result of `ref` (its `runs` row holds `error`), as an ingest records a checkpoint that failed."""
    import uuid

    from geowh.ingest.engine.plan import CheckpointResult
    from geowh.warehouse import utcnow

    run_id, now = str(uuid.uuid4()), utcnow()
    run = plan.run_row(ref, run_id, "failed", error=error, dtype=plan.dtype, started_at=now, finished_at=now)
    rows = {"models": [plan.series.models_row()], "checkpoints": [ref.row()]}
    return CheckpointResult(ref, run_id, "failed", rows, run, error)


def summarize(result) -> dict[str, Any]:
    """The metrics of a result's last layer and first pooling, flat: what trainers log."""
    metrics = result.rows["metrics"]
    layer = max((r["layer"] for r in metrics if r["layer"] is not None), default=None)
    pooling = next((r["pooling"] for r in metrics if r["layer"] == layer), None)
    out: dict[str, Any] = {
        "step": result.ref.step, "tokens": result.ref.tokens, "checkpoint": result.ref.label,
        "probe": result.run["probe"], "layer": layer, "pooling": pooling, "seconds": round(result.seconds, 3),
    }
    out |= {r["metric"]: r["value"] for r in metrics if r["layer"] == layer and r["pooling"] == pooling}
    spectrum = next((r for r in result.rows.get("spectra", []) if r["layer"] == layer and r["pooling"] == pooling), None)
    out["eigenvalues"] = spectrum["eigenvalues"] if spectrum is not None else []
    return out


SPECTRUM_TAG = "geowh/log10_eigenvalue_ratio"
"""The name the eigenspectrum is logged under: log10(λ/λ₁) of the positive eigenvalues."""


def log_spectrum(reporters, eigenvalues, step: int) -> list[str]:
    """Send the eigenspectrum to each reporter that accepts one, beside the scalars: a histogram
    of log10(λ/λ₁) to a TensorBoard writer, a (rank, eigenvalue) table to W&B. `reporters` are
    the trainer's callbacks (transformers) or loggers (Lightning); returns the kinds reached.
    Never raises: a reporter that fails is logged and skipped, as a failed measurement is (the
    spectrum is a picture of the training, never a reason to stop it)."""
    import logging

    import numpy as np

    lam = np.asarray(eigenvalues, dtype=float)
    lam = lam[lam > 0]
    if lam.size == 0:
        return []
    reached = []
    for reporter in reporters:
        try:
            reached += _send_spectrum(reporter, lam, step)
        except Exception:  # noqa: BLE001 — a reporter's own failure (a closed writer, W&B offline)
            logging.getLogger(__name__).exception("geowh: the spectrum could not be logged to %s",
                                                  type(reporter).__name__)
    return reached


def _send_spectrum(reporter, lam, step: int) -> list[str]:
    import numpy as np

    reached = []
    # transformers' TensorBoardCallback holds `tb_writer`; Lightning's TensorBoardLogger its `experiment`.
    writer = getattr(reporter, "tb_writer", None)
    if writer is None and type(reporter).__name__ == "TensorBoardLogger":
        writer = reporter.experiment
    if writer is not None and hasattr(writer, "add_histogram"):
        writer.add_histogram(SPECTRUM_TAG, np.log10(lam / lam[0]), step)
        writer.flush()
        reached.append("tensorboard")
    rows = [[i + 1, float(v)] for i, v in enumerate(lam)]
    wandb = getattr(reporter, "_wandb", None)  # transformers' WandbCallback
    if wandb is not None and getattr(wandb, "run", None) is not None:
        # commit=False: it joins the scalars the trainer logs for this step right after.
        wandb.log({"geowh/eigenspectrum": wandb.Table(columns=["rank", "eigenvalue"], data=rows)}, commit=False)
        reached.append("wandb")
    elif type(reporter).__name__ == "WandbLogger":
        reporter.log_table("geowh/eigenspectrum", columns=["rank", "eigenvalue"], data=rows, step=step)
        reached.append("wandb")
    return reached


@contextlib.contextmanager
def _inference(model) -> Iterator[None]:
    """Eval mode for the measurement, then every module's mode and every random state as they were.

    The forward pass draws no random numbers in eval mode; the states are restored anyway, so
    that a run with measurements ends in the same weights as one without, whatever the model.
    """
    import numpy as np
    import torch

    modes = [(m, m.training) for m in model.modules()]
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    python, numpy = random.getstate(), np.random.get_state()
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(python)
        np.random.set_state(numpy)
