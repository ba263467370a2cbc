"""The arithmetic of the generation measurement, torch-free: pass@k, distinct-n, per-task scores, and
pass@k for any k recomputed from the per-item counts the warehouse stores (`generation_items`).

The measurement (ingest/measurements/generation.py) computes its `evals` rows with these functions,
so what it stores and what `pass_at_k_table` recomputes are one definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl

from geowh.errors import InputError
from geowh.warehouse import Warehouse


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of Chen et al. 2021 for one item: 1 - C(n-c, k) / C(n, k), the chance that
    k of the n samples drawn without replacement hold at least one of the c correct ones.

    The product form 1 - ∏_{i=n-c+1}^{n} (1 - k/i) avoids the huge binomials of C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise InputError(f"pass@{k} of {c} correct in {n} samples: need 0 ≤ c ≤ n and 1 ≤ k ≤ n")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct n-grams over all n-grams of `texts` (whitespace words; Li et al. 2016's distinct-n),
    pooled over the texts; None when they hold no n-gram."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def mean_and_stderr(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """The mean over items and its standard error (sample std / √m; None below 2 items)."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var / len(xs))


def accuracy(greedy_correct: Sequence[bool]) -> tuple[float, float]:
    """Greedy accuracy over the items and its binomial standard error √(p(1-p)/m)."""
    m = len(greedy_correct)
    p = sum(map(bool, greedy_correct)) / m
    return p, math.sqrt(p * (1 - p) / m)


def pass_at_k_scores(counts: Sequence[tuple[int, int]], k: int) -> tuple[float | None, float | None]:
    """pass@k of a task from its items' (n samples, c correct): the mean over items and its standard error."""
    return mean_and_stderr([pass_at_k(n, c, k) for n, c in counts])


def pass_at_k_table(wh: Warehouse, k: int | Sequence[int], *, model: str | None = None,
                    task: str | None = None) -> pl.DataFrame:
    """pass@k for any k, recomputed from `generation_items` (n and c per item) without a model:
    one row per (model, checkpoint, step, task, k) with value, stderr and items. A k larger than an
    item's samples is refused.

    Example:
        pass_at_k_table(Warehouse("w.duckdb"), [2, 8], model="mini")
    """
    ks = [k] if isinstance(k, int) else list(k)
    where, params = ["TRUE"], []
    for column, wanted in (("g.model", model), ("g.task", task)):
        if wanted is not None:
            where.append(f"{column} = ?")
            params.append(wanted)
    items = wh.query(
        f"""SELECT g.model, g.checkpoint, c.step, c.stage_order, g.task, g.samples, g.correct
            FROM generation_items g LEFT JOIN checkpoints c USING (model, checkpoint)
            WHERE {' AND '.join(where)} ORDER BY g.model, c.stage_order, c.step, g.checkpoint, g.task, g.item""",
        params,
    )
    schema = {"model": pl.String, "checkpoint": pl.String, "step": pl.Int64, "task": pl.String, "k": pl.Int64,
              "value": pl.Float64, "stderr": pl.Float64, "items": pl.Int64}
    if items.height == 0:
        return pl.DataFrame([], schema=schema)
    fewest = int(items["samples"].min())  # type: ignore[arg-type]
    if too_large := [x for x in ks if not 1 <= x <= fewest]:
        raise InputError(f"pass@{too_large[0]}: k must be between 1 and the samples per item ({fewest})")
    rows = []
    for (model_, checkpoint, step, task_), group in items.group_by(
        ["model", "checkpoint", "step", "task"], maintain_order=True
    ):
        counts = list(zip(group["samples"].to_list(), group["correct"].to_list()))
        for x in ks:
            value, stderr = pass_at_k_scores(counts, x)
            rows.append({"model": model_, "checkpoint": checkpoint, "step": step, "task": task_, "k": x,
                         "value": value, "stderr": stderr, "items": len(counts)})
    return pl.DataFrame(rows, schema=schema)
