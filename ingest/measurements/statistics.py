"""Memorization's statistics: the zero rule of log P∞, Spearman ρ, its partial (length-controlled) variant,
the three metrics by name, and the paper's Table 7 of suffix lengths. No torch, no index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ZERO_RULE = "drop-zero-tokens,exclude-all-zero-items"
"""The authors' handling of P∞ = 0: such a token is left out of the item's sum, and an item whose
answer tokens are all 0 is left out of the correlation."""


METRIC = "memorization_spearman"


METRIC_PER_TOKEN = "memorization_spearman_per_token"


METRIC_PARTIAL = "memorization_spearman_partial_length"


SUFFIX_BUCKETS = ("<=3", "4", "5", "6", "7", "8", ">8")  # the paper's Table 7


def log_p_inf(probs: Sequence[float]) -> tuple[float | None, int, str | None]:
    """(log P∞ of the answer, zero tokens, why excluded) under ZERO_RULE."""
    kept = [p for p in probs if p > 0]
    zeros = len(probs) - len(kept)
    if not probs:
        return None, 0, "the answer has no tokens"
    if not kept:
        return None, zeros, "every answer token has P∞ = 0"
    return float(sum(math.log(p) for p in kept)), zeros, None


def suffix_length_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's Table 7: share of answer-token queries by the suffix length P∞ used."""
    counts = dict.fromkeys(SUFFIX_BUCKETS, 0)
    for row in rows:
        for k in row["suffix_lens"]:
            counts["<=3" if k <= 3 else ">8" if k > 8 else str(k)] += 1
    total = sum(counts.values())
    return [{"suffix_len": b, "tokens": n, "share": n / total if total else math.nan} for b, n in counts.items()]


def spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman ρ, its p-value and n; NaN with a reason when it cannot be computed."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    if n < 3:
        return {"rho": math.nan, "p": math.nan, "n": n, "reason": f"{n} item(s) with both log-likelihoods; need 3"}
    a, b = zip(*pairs)
    if len(set(a)) == 1 or len(set(b)) == 1:
        return {"rho": math.nan, "p": math.nan, "n": n, "reason": "one side is constant across items"}
    result = spearmanr(a, b)
    return {"rho": float(result.statistic), "p": float(result.pvalue), "n": n, "reason": None}


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> dict[str, Any]:
    """Spearman ρ of x and y given z: the Pearson correlation of the ranks of x and y, each with the
    least-squares line in the ranks of z taken out; its p-value from t with n − 3 degrees of freedom."""
    import numpy as np
    from scipy.stats import rankdata, t

    triples = [(a, b, c) for a, b, c in zip(x, y, z)
               if all(v is not None and math.isfinite(v) for v in (a, b, c))]
    n = len(triples)
    if n < 4:
        return {"rho": math.nan, "p": math.nan, "n": n, "reason": f"{n} item(s) with both log-likelihoods; need 4"}
    ranks = np.column_stack([rankdata(column) for column in zip(*triples)])  # (n, 3): x, y, z
    if any(len(set(ranks[:, k])) == 1 for k in range(3)):
        return {"rho": math.nan, "p": math.nan, "n": n, "reason": "a side or the length is constant across items"}
    design = np.column_stack([np.ones(n), ranks[:, 2]])
    residuals = ranks[:, :2] - design @ np.linalg.lstsq(design, ranks[:, :2], rcond=None)[0]  # (n, 2)
    spread = np.linalg.norm(ranks[:, :2] - ranks[:, :2].mean(axis=0), axis=0)
    if (np.linalg.norm(residuals, axis=0) <= 1e-9 * spread).any():  # rounding, not a residual
        return {"rho": math.nan, "p": math.nan, "n": n, "reason": "a side is a function of the length alone"}
    rho = float(np.clip(np.corrcoef(residuals[:, 0], residuals[:, 1])[0, 1], -1.0, 1.0))
    dof = n - 3
    p = 0.0 if abs(rho) == 1 else float(2 * t.sf(abs(rho) * math.sqrt(dof / (1 - rho * rho)), dof))
    return {"rho": rho, "p": p, "n": n, "reason": None}


def correlations(infgram: Sequence[dict[str, Any]], model: Sequence[tuple[float, int]]) -> dict[str, dict[str, Any]]:
    """The authors' ρ and its two length-controlled variants, by metric name, over the items the zero rule keeps.

    `infgram` are the items' `infgram_items` rows, `model` their (log P_model, answer tokens), in
    the same order.
    """
    used = [(row, lp, n) for row, (lp, n) in zip(infgram, model) if row["excluded"] is None]
    inf = [row["log_p_inf"] for row, _, _ in used]
    mod = [lp for _, lp, _ in used]
    return {
        METRIC: spearman(inf, mod),
        METRIC_PER_TOKEN: spearman(
            [row["log_p_inf"] / (row["answer_tokens"] - row["zero_tokens"]) for row, _, _ in used],
            [lp / n if n else math.nan for _, lp, n in used],
        ),
        METRIC_PARTIAL: partial_spearman(inf, mod, [n for _, _, n in used]),
    }
