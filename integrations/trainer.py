"""`GeometryCallback`: RankMe and αReQ of a model in a Hugging Face `Trainer`, live."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from geowh.errors import GeowhError
from geowh.integrations.probe import DEFAULT_MAX_LEN, DEFAULT_N, LOGGED, GeometryProbe, log_spectrum

logger = logging.getLogger(__name__)


class GeometryCallback(TrainerCallback):
    """Measure the model every `every` steps (default: at each evaluation) on a fixed probe.

    No checkpoint is saved: the model in training is run on the probe (eval mode, no
    gradients, random state untouched, train mode restored). With `db`, the rows an ingest
    would write land in the warehouse as model `name` (default: the output folder's name),
    checkpoint `step{N}`; `rankme` and `alpha_req` join the trainer's logs at that step.
    Tokens are step × per-device batch × gradient accumulation × world size × `seq_len` when
    `seq_len` is given, else the trainer's `num_input_tokens_seen` when it counts them.
    Under distributed training only the main process measures and writes. The tokenizer is
    the trainer's `processing_class` unless `tokenizer` is given.

    Model and tokenizer are checked at `on_train_begin` (vocabulary, context length, device):
    a mismatch is an InputError before any step is spent. A measurement that fails later is
    recorded as a failed run, logged as a warning, and the training goes on.

    Example:
        trainer = Trainer(model, args, train_dataset=data, processing_class=tokenizer,
                          callbacks=[GeometryCallback("held_out.txt", db="w.duckdb", every=500, seq_len=512)])
    """

    def __init__(
        self,
        probe: str | Path,
        db: str | Path | None = None,
        name: str | None = None,
        every: int | None = None,
        n: int = DEFAULT_N,
        max_len: int = DEFAULT_MAX_LEN,
        layers: str = "last",
        *,
        tokenizer=None,
        seq_len: int | None = None,
        **options: Any,
    ):
        if every is not None and every < 1:
            raise GeowhError(f"every={every}: measure every N ≥ 1 steps, or None for each evaluation")
        self.settings = dict(probe=probe, db=db, n=n, max_len=max_len, layers=layers, **options)
        self.name, self.every, self.tokenizer, self.seq_len = name, every, tokenizer, seq_len
        self.probe: GeometryProbe | None = None
        self.pending: dict[str, float] = {}
        self.last_step: int | None = None
        self.measured: list[dict] = []
        """What each measurement returned, in order."""

    # -- events ------------------------------------------------------------------------------

    def on_init_end(self, args, state, control, **kwargs):
        _go_before_reporters(self)

    def on_train_begin(self, args, state, control, processing_class=None, model=None, **kwargs):
        _go_before_reporters(self)  # also when added with trainer.add_callback after init
        if self.every is None and args.eval_strategy == "no":
            raise GeowhError(
                "GeometryCallback(every=None) measures at each evaluation, but this trainer never evaluates: "
                "pass every=N (steps), or set eval_strategy and eval_steps in TrainingArguments"
            )
        if self.probe is None and state.is_world_process_zero:
            tokenizer = self.tokenizer or processing_class
            if tokenizer is None:
                raise GeowhError("GeometryCallback needs a tokenizer: Trainer(processing_class=tokenizer) or tokenizer=")
            name = self.name or Path(args.output_dir).resolve().name
            self.probe = GeometryProbe(tokenizer, name=name, **self.settings)
        if self.probe is not None and model is not None:
            # vocabulary, context length, device: refused now, before the training spends a step
            self.probe.check(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        due = state.global_step % self.every == 0 if self.every else control.should_evaluate
        return self._maybe_measure(due, args, state, control, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        # eval_strategy="epoch" decides to evaluate here, not at a step's end.
        return self._maybe_measure(self.every is None and control.should_evaluate, args, state, control, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pending and logs is not None:
            logs.update(self.pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self.pending)  # the trainer recorded logs before calling us
            self.pending = {}

    # -- the measurement -------------------------------------------------------------------------

    def _maybe_measure(self, due: bool, args, state, control, model):
        if due and state.is_world_process_zero and model is not None and state.global_step != self.last_step:
            self.last_step = state.global_step
            self._measure(args, state, model)
            control.should_log = True  # so that the values reach the reporters at this step
        return control

    def _measure(self, args, state, model) -> None:
        # A measurement never stops the training: a failure is recorded in the warehouse (as a
        # failed run, by GeometryProbe.measure), logged, and the next one is tried as planned.
        try:
            values = self.probe.measure(model, state.global_step, tokens=self._tokens(args, state))
        except GeowhError as e:
            logger.warning("geowh: the measurement at step %d failed, training goes on: %s", state.global_step, e)
            return
        except Exception:  # noqa: BLE001 — e.g. the warehouse's disk filled: still not the training's problem
            logger.exception("geowh: the measurement at step %d failed, training goes on", state.global_step)
            return
        self.measured.append(values)
        self.pending = {k: values[k] for k in LOGGED if k in values}
        log_spectrum(_callbacks(self), values.get("eigenvalues", []), state.global_step)

    def _tokens(self, args, state) -> float | None:
        if self.seq_len:
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            return float(state.global_step * per_step * self.seq_len)
        seen = getattr(state, "num_input_tokens_seen", 0)
        return float(seen) if seen else None


def _callbacks(callback: TrainerCallback) -> list:
    """The trainer's callbacks (its reporters among them): the list that holds `callback` beside
    the DefaultFlowCallback (found as `_go_before_reporters` finds it)."""
    from transformers.trainer_callback import DefaultFlowCallback

    for holder in gc.get_referrers(callback):
        if isinstance(holder, list) and any(isinstance(c, DefaultFlowCallback) for c in holder):
            return [c for c in holder if c is not callback]
    return []


def _go_before_reporters(callback: TrainerCallback) -> None:
    """Move `callback` right after the trainer's DefaultFlowCallback in its callback list.

    The trainer places reporting callbacks (W&B, MLflow, TensorBoard) before the user's, and
    each sends `logs` on at once: our values must be in `logs` before they see it. After the
    default flow, `control.should_evaluate` is already decided when `on_step_end` runs. The
    trainer gives callbacks no handle on its list, so it is found among the referrers of the
    callback. Moving an item backwards leaves the items after it in place, so an event being
    dispatched over the list neither skips nor repeats a callback.
    """
    from transformers.trainer_callback import DefaultFlowCallback

    for holder in gc.get_referrers(callback):
        if not isinstance(holder, list) or not any(isinstance(c, DefaultFlowCallback) for c in holder):
            continue
        flow = next(i for i, c in enumerate(holder) if isinstance(c, DefaultFlowCallback))
        if holder.index(callback) > flow + 1:
            holder.remove(callback)
            holder.insert(flow + 1, callback)
