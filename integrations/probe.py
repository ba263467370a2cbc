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
    training); or `probe` is a whole `IngestConfig`. Rows go to the warehouse `db` when one is given.

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
        self.probe = geometry.probe_for(self.tokenizer)
        """The tokenized probe (the ids every measurement feeds the model)."""

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
        computed (NaN, out of memory); the failed run is recorded when `db` is set.
        """
        from geowh.ingest.sources.models import Loaded, dtype_name
        from geowh.ingest.engine.run import process_checkpoint, write_result
        from geowh.ingest.sources.series import CheckpointRef

        parameter = next(model.parameters())
        dtype = dtype_name(parameter.dtype)
        ref = CheckpointRef(self.name, f"step{int(step)}", int(step), float(tokens) if tokens is not None else None)
        loaded = Loaded(model, self.tokenizer, parameter.device, parameter.dtype, ref)
        with _inference(model):
            result = process_checkpoint(ref, self._plan(dtype), loaded=loaded)
        if self.wh is not None:
            write_result(self.wh, result)
        if not result.ok:
            raise CheckpointError(f"geometry of {self.name} at step {step} failed: {result.error}")
        return summarize(result)


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
    return out


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
