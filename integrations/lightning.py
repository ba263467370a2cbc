"""`GeometryLightningCallback`: the probe of `GeometryProbe` in a Lightning training loop.

Needs `lightning` (or the older `pytorch_lightning`): `pip install 'geowh[lightning]'`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geowh.errors import GeowhError, InputError
from geowh.integrations.probe import DEFAULT_MAX_LEN, DEFAULT_N, LOGGED, GeometryProbe, log_spectrum

try:
    from lightning.pytorch import Callback
except ImportError:  # the package's older name
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise InputError(
            "GeometryLightningCallback needs Lightning: pip install lightning (or geowh[lightning])"
        ) from None

logger = logging.getLogger(__name__)


class GeometryLightningCallback(Callback):
    """Measure the LightningModule's transformers model every `every` optimizer steps.

    Writes the rows of `GeometryProbe.measure` (model `name`, checkpoint `step{N}`) and logs
    `rankme` and `alpha_req` through `pl_module.log`, so the run's loggers show them. Only
    global rank zero measures. `model` picks the transformers model: an attribute name of the
    LightningModule or a function of it (default: the module itself when it has a `config`,
    else its `model` attribute). Tokens = step × `tokens_per_step` when that is given.

    Example:
        trainer = L.Trainer(callbacks=[GeometryLightningCallback(tokenizer, "held_out.txt", db="w.duckdb",
                                                                 name="my-run", every=500)])
    """

    def __init__(
        self,
        tokenizer,
        probe: str | Path,
        db: str | Path | None = None,
        name: str = "live",
        every: int = 1000,
        n: int = DEFAULT_N,
        max_len: int = DEFAULT_MAX_LEN,
        layers: str = "last",
        *,
        model: str | Callable[[Any], Any] | None = None,
        tokens_per_step: int | None = None,
        **options: Any,
    ):
        if every < 1:
            raise InputError(f"every={every}: measure every N ≥ 1 optimizer steps")
        self.every, self.model, self.tokens_per_step = every, model, tokens_per_step
        self.settings = dict(tokenizer=tokenizer, probe=probe, db=db, name=name, n=n, max_len=max_len, layers=layers,
                             **options)
        self.probe: GeometryProbe | None = None
        self.last_step: int | None = None
        self.measured: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        # vocabulary, context length, device: refused now, before the training spends a step
        if trainer.is_global_zero:
            if self.probe is None:
                self.probe = GeometryProbe(**self.settings)
            self.probe.check(self._model_of(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end on one optimizer step: measure it once.
        if step % self.every or step == self.last_step or not trainer.is_global_zero:
            return
        self.last_step = step
        if self.probe is None:
            self.probe = GeometryProbe(**self.settings)
        tokens = float(step * self.tokens_per_step) if self.tokens_per_step else None
        # A measurement never stops the training: a failure is recorded (a failed run), logged, and skipped.
        try:
            values = self.probe.measure(self._model_of(pl_module), step, tokens=tokens)
        except GeowhError as e:
            logger.warning("geowh: the measurement at step %d failed, training goes on: %s", step, e)
            return
        except Exception:  # noqa: BLE001
            logger.exception("geowh: the measurement at step %d failed, training goes on", step)
            return
        self.measured.append(values)
        pl_module.log_dict({k: values[k] for k in LOGGED if k in values}, rank_zero_only=True)
        log_spectrum(trainer.loggers, values.get("eigenvalues", []), step)

    def _model_of(self, pl_module):
        if callable(self.model):
            return self.model(pl_module)
        if isinstance(self.model, str):
            return getattr(pl_module, self.model)
        return pl_module if hasattr(pl_module, "config") else pl_module.model
