"""Distributional memorization (METHOD.md §5): Spearman ρ between ∞-gram and model log-likelihoods.

Two sides, each computed once:

- the ∞-gram side, per (index, task): for every QA item and answer token, P∞ and the suffix
  length used; the item's log P∞ under the authors' zero rule. Cached in `infgram_items`.
- the model side, per checkpoint: log P_model(answer | prompt), one forward pass per batch of
  items. Stored in `memorization_items`.

Their Spearman ρ across the items both sides keep is the metric `memorization_spearman`: a
`metrics` row whose `probe` is the task name and whose `layer` and `pooling` are NULL (the score
reads the LM head, no layer of the geometry), with index, task, n, the zero rule and both
tokenizers in `params`.

Both sides are sums over the answer's tokens, so the authors' ρ also measures answer length
(the model side grows more negative with every token; the ∞-gram side, whose P∞ ≈ 1 inside a
memorised answer, hardly does). Two length-controlled variants are stored next to it, as their
own metrics over the same items: `memorization_spearman_per_token` (ρ of the per-token means:
log P∞ over the tokens kept, log P_model over all answer tokens) and
`memorization_spearman_partial_length` (the partial Spearman ρ of the two sums given the number
of answer tokens in the model's tokenizer).

Items are formatted `Question: {q}? Answer: {a}` (the `?` only when the question lacks one). The
prompt `Question: {q}? Answer:` and the target ` {a}` (with its leading space) are tokenized
separately, so the answer tokens are the same whatever the question, in both tokenizers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geowh.errors import InputError
from geowh.ingest.config import MemorizeConfig
from geowh.ingest.engine.plan import Measurement, Rows
from geowh.ingest.measurements import Option
from geowh.ingest.measurements.statistics import (
    METRIC,
    ZERO_RULE,
    correlations,
    log_p_inf,
    suffix_length_table,
)
from geowh.ingest.measurements.tasks import QAItem, load_task
from geowh.progress import Progress, silent

NAME = "memorization"
OPTIONS = (
    Option("memorization", "--memorization", "Also score ∞-gram memorization on a QA task (triviaqa or a .jsonl)."),
    Option("index", "--index", "infini-gram index folder for --memorization.", Path),
    Option("index_tokenizer", "--index-tokenizer", "Tokenizer of an index built elsewhere."),
)
BATCH_SIZE = MemorizeConfig.batch_size
"""QA items per forward pass: `geowh memorize --batch-size`'s default, and `geowh ingest --memorization`'s."""


# -- the ∞-gram side ---------------------------------------------------------------------------


def infgram_item(index, task: str, item: QAItem) -> dict[str, Any]:
    """The `infgram_items` row of one item."""
    from geowh.warehouse import utcnow

    prompt, answer = index.tokenize(item.prompt), index.tokenize(item.target)
    scored = index.continuation_probs(prompt, answer)
    probs = [p.prob for p in scored]
    value, zeros, excluded = log_p_inf(probs)
    return {
        "index_dir": str(index.directory.resolve()),
        "task": task,
        "item": item.item,
        "question": item.question,
        "answer": item.answer,
        "answer_tokens": len(answer),
        "zero_tokens": zeros,
        "probs": probs,
        "suffix_lens": [p.suffix_len for p in scored],
        "log_p_inf": value,
        "excluded": excluded,
        "computed_at": utcnow(),
    }


def infgram_side(
    index, task: str, items: Sequence[QAItem], wh=None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ∞-gram rows of `items` (in their order), read from `infgram_items` when cached there,
    else computed; and the rows computed here, for the caller to store (it writes nothing)."""
    directory = str(index.directory.resolve())
    cached: dict[str, dict] = {}
    if wh is not None and wh.path.exists():
        wh.migrate()  # an older file may lack the table: upgraded as any writer of it would
        frame = wh.query("SELECT * FROM infgram_items WHERE index_dir = ? AND task = ?", [directory, task])
        cached = {r["item"]: r for r in frame.to_dicts()}
    missing = [i for i in items if i.item not in cached]
    fresh = index.map(lambda i: infgram_item(index, task, i), missing)
    cached.update({r["item"]: r for r in fresh})
    return [cached[i.item] for i in items], fresh


# -- the model side ----------------------------------------------------------------------------


def answer_logliks(model, tokenizer, items: Sequence[QAItem], batch_size: int = BATCH_SIZE) -> list[tuple[float, int]]:
    """(log P_model(answer | prompt), answer tokens) per item; one forward pass per batch.

    Batches hold items of similar length, right-padded and masked (right padding leaves the
    positions of real tokens unchanged). Only the logits that predict answer tokens are kept.
    Prompts longer than the model's context lose their oldest tokens; the answer is kept whole.
    """
    import torch

    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    encoded = []
    for item in items:  # the prompt is never empty: it starts with "Question:"
        prompt = tokenizer(item.prompt, add_special_tokens=True)["input_ids"]
        answer = tokenizer(item.target, add_special_tokens=False)["input_ids"]
        if len(answer) >= limit:
            answer = answer[: limit - 1]
        prompt = prompt[max(0, len(prompt) + len(answer) - limit) :]
        encoded.append((prompt, answer))
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    results: list[tuple[float, int]] = [(math.nan, 0)] * len(items)
    device = next(model.parameters()).device
    keep_arg = "logits_to_keep" in _forward_parameters(model)
    for begin in range(0, len(order), batch_size):
        batch = [i for i in order[begin : begin + batch_size] if encoded[i][1]]
        if not batch:
            continue
        width = max(len(encoded[i][0]) + len(encoded[i][1]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, positions, targets = [], [], []
        for b, i in enumerate(batch):
            prompt, answer = encoded[i]
            full = prompt + answer
            ids[b, : len(full)] = torch.tensor(full)
            mask[b, : len(full)] = 1
            for j, token in enumerate(answer):  # the logit at position t predicts token t + 1
                rows.append(b)
                positions.append(len(prompt) - 1 + j)
                targets.append(token)
        lo, hi = min(positions), max(positions) + 1
        kwargs = {"logits_to_keep": torch.arange(lo, hi, device=device)} if keep_arg else {}
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        offset = lo if keep_arg else 0  # (batch, kept positions, vocab)
        picked = logits[torch.tensor(rows, device=device), torch.tensor(positions, device=device) - offset]
        logprobs = torch.log_softmax(picked.float(), dim=-1)  # (answer tokens in batch, vocab)
        token_lp = logprobs.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
        sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
        sums.index_add_(0, torch.tensor(rows, device=device), token_lp.double())
        for b, i in enumerate(batch):
            results[i] = (float(sums[b]), len(encoded[i][1]))
    return results


def _scored(loaded, items: Sequence[QAItem], batch_size: int) -> list[tuple[float, int]]:
    """`answer_logliks` of a loaded checkpoint; running out of memory fails the checkpoint, not the run."""
    import torch

    from geowh.errors import CheckpointError

    try:
        return answer_logliks(loaded.model, loaded.tokenizer, items, batch_size)
    except torch.OutOfMemoryError as e:
        raise CheckpointError(
            f"out of memory scoring {loaded.ref.label} with --batch-size {batch_size}: give a smaller --batch-size"
        ) from e


def _forward_parameters(model) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


# -- one task against one index, for any number of checkpoints ---------------------------------


class Memorization(Measurement):
    """A QA task scored against an index: the ∞-gram side computed once, each checkpoint's model side on call.

    >>> mem = Memorization("triviaqa", "indexes/pile")
    >>> Warehouse().write(mem.start(None, Warehouse()))   # the ∞-gram side (what `run` does)
    >>> rows = mem.score(loaded, run_id)   # {"memorization_items": [...], "metrics": [...]}
    >>> ingest("pythia-160m", measurements=[mem])   # as part of a geometry ingest

    Building it loads the task and opens the index (a bad task or index fails there, before
    anything is written); it writes nothing: `start`, which the driver of a run calls, returns
    the ∞-gram rows not cached in the warehouse yet, for the driver to write.
    """

    def __init__(
        self,
        task: str,
        index: str | Path,
        *,
        index_tokenizer: str | None = None,
        batch_size: int = BATCH_SIZE,
        limit: int | None = None,
        index_workers: int | None = None,
    ):
        from geowh.index.index import Index

        self.task, self.items = load_task(task, limit)
        self.index = Index(index, tokenizer=index_tokenizer, workers=index_workers)
        self.batch_size = batch_size
        self.limit = limit
        self.infgram: dict[str, dict[str, Any]] = {}
        """The ∞-gram row of each item, by item id: filled by `start`."""
        meta = self.index.meta
        config: dict[str, Any] = {  # what decides the results: the config of a memorization run (and of its key)
            "task": self.task,
            "items": len(self.items),
            "limit": self.limit,
            "index": str(self.index.directory.resolve()),
            "index_tokenizer": meta.tokenizer,
            "index_tokens": meta.tokens,
            "index_built_at": meta.built_at,
            "zero_rule": ZERO_RULE,
        }
        super().__init__(NAME, None, config, with_head=True, probe=self.task)

    def __getstate__(self) -> dict[str, Any]:
        # What a distributed run ships to its workers: they score the model side only. The ∞-gram
        # side was computed here, so the index (its memory maps, the engine) stays behind and
        # workers on other nodes need no copy of it.
        return {k: v for k, v in self.__dict__.items() if k != "index"}

    def start(self, plan, wh) -> Rows:
        """The ∞-gram side of every item (cached ones read from `wh`); returns the rows computed here."""
        from geowh.index.index import index_row

        rows, fresh = infgram_side(self.index, self.task, self.items, wh)
        self.infgram = {r["item"]: r for r in rows}
        return {"indexes": [index_row(self.index)], "infgram_items": fresh} if fresh else {}

    def measure(self, loaded, ref, config, meter) -> Rows:
        return self.score(loaded)

    def score(self, loaded, run_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Rows for one loaded checkpoint (a causal LM, `with_head=True`).

        Without `run_id` the rows carry none, for a caller that fills in its own (ingest).
        """
        if not self.infgram:
            self.start(None, None)  # used outside a run: the ∞-gram side computed, not stored
        ref = loaded.ref
        scored = _scored(loaded, self.items, self.batch_size)
        run = {"run_id": run_id} if run_id else {}
        item_rows = [
            {"model": ref.model, "checkpoint": ref.label, "task": self.task, "item": item.item,
             "answer_tokens": n, "log_p_model": lp, **run}
            for item, (lp, n) in zip(self.items, scored)
        ]
        excluded = sum(1 for r in self.infgram.values() if r["excluded"] is not None)
        tokenizer = getattr(loaded.tokenizer, "name_or_path", None)
        metrics = [  # the authors' score first
            {"model": ref.model, "checkpoint": ref.label, "probe": self.task, "layer": None, "pooling": None,
             "index_dir": self.config["index"], "metric": name, "value": corr["rho"], "stderr": None, **run,
             "params": {**self.config, "n": corr["n"], "p_value": corr["p"], "excluded_zero": excluded,
                        "model_tokenizer": tokenizer, "reason": corr["reason"]}}
            for name, corr in correlations([self.infgram[i.item] for i in self.items], scored).items()
        ]
        return {"memorization_items": item_rows, "metrics": metrics}

    def suffix_lengths(self) -> list[dict[str, Any]]:
        return suffix_length_table(list(self.infgram.values()))


def build(config, options: Mapping[str, Any]) -> Memorization | None:
    """`--memorization TASK --index DIR [--index-tokenizer NAME]`: both or neither."""
    task, index = options.get("memorization"), options.get("index")
    if task is None and index is None:
        return None
    if task is None or index is None:
        raise InputError("--memorization TASK and --index DIR go together: give both, or neither")
    return Memorization(task, index, index_tokenizer=options.get("index_tokenizer"))


def index_stats(index: str | Path, task: str, *, index_tokenizer: str | None = None, limit: int | None = None,
                wh=None) -> dict[str, Any]:
    """Table 7 for a task and index: answer-token queries by the suffix length P∞ used (the ∞-gram
    rows computed here are stored in `wh`)."""
    mem = Memorization(task, index, index_tokenizer=index_tokenizer, limit=limit)
    computed = mem.start(None, wh)
    if computed and wh is not None:
        wh.write(computed)
    rows = list(mem.infgram.values())
    return {
        "index": str(mem.index.directory.resolve()),
        "task": mem.task,
        "items": len(rows),
        "excluded": sum(1 for r in rows if r["excluded"] is not None),
        "buckets": mem.suffix_lengths(),
    }


# -- the standalone command: the run engine with memorization alone ----------------------------


def memorize(
    model: str,
    config: MemorizeConfig,
    selection=None,
    *,
    wh,
    force: bool = False,
    progress: Progress = silent,
    executor=None,
) -> list[dict[str, Any]]:
    """Score every selected checkpoint of `model`; one summary dict per checkpoint.

    The run engine (`ingest.engine.run`) with the memorization measurement alone: a checkpoint with an
    ok run of the same config is skipped (unless `force`), a failed one is recorded in `runs`
    with its error and the next one goes on, an interrupt records the current one
    `interrupted`; each checkpoint's rows are written in one transaction. Each dict says
    checkpoint, step, status (ok, skipped, failed), value (the authors' ρ), n, seconds and error.
    `progress` hears of each checkpoint as `ingest` tells it (geowh/progress.py).

    Example:
        memorize("pythia-160m", MemorizeConfig("triviaqa", "indexes/pile"), Selection("log:20"), wh=Warehouse())
    """
    from geowh.ingest.config import Selection
    from geowh.ingest.engine.plan import plan_ingest
    from geowh.ingest.engine.run import run

    engine = config.engine()
    mem = Memorization(config.task, config.index, index_tokenizer=config.index_tokenizer,
                       batch_size=config.batch_size, limit=config.limit)
    plan = plan_ingest(model, engine, selection or Selection(), [mem])
    summary = run(plan, wh, force=force, progress=progress, executor=executor)
    scored = {}
    run_ids = [c["run_id"] for c in summary.checkpoints if c["run_id"]]
    if run_ids:
        frame = wh.query(
            f"SELECT checkpoint, value, (params ->> '$.n')::INTEGER AS n FROM metrics WHERE metric = ? "
            f"AND run_id IN ({', '.join('?' * len(run_ids))})", [METRIC, *run_ids],
        )
        scored = {r["checkpoint"]: r for r in frame.to_dicts()}
    return [
        {"checkpoint": c["checkpoint"], "step": c["step"], "status": c["status"],
         "value": scored.get(c["checkpoint"], {}).get("value"), "n": scored.get(c["checkpoint"], {}).get("n"),
         "seconds": c["seconds"], "error": c["error"]}
        for c in summary.checkpoints
    ]
