"""The length-controlled memorization scores, next to the authors' ρ, checked against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from geowh.ingest.measurements.statistics import (
    METRIC,
    METRIC_PARTIAL,
    METRIC_PER_TOKEN,
    correlations,
    log_p_inf,
    partial_spearman,
)

# Twelve items: P∞ of each answer token (0 = never follows the suffix), and the model's
# (log P_model, answer tokens). Longer answers have lower model sums, as in the demo.
PROBS = [
    [0.9, 0.8], [0.5, 0.0, 0.7], [0.2], [0.99, 0.98, 0.97, 0.96], [0.1, 0.3], [0.0, 0.0],
    [0.6, 0.6, 0.6], [0.05, 0.9, 0.9, 0.9, 0.9], [0.4], [0.7, 0.2, 0.0, 0.8], [0.33, 0.66], [0.8, 0.8, 0.8, 0.8, 0.8],
]
MODEL = [(-9.0, 2), (-13.5, 3), (-3.1, 1), (-20.2, 4), (-11.0, 2), (-7.0, 2), (-15.3, 3), (-24.0, 5), (-6.2, 1),
         (-17.9, 4), (-8.8, 2), (-21.1, 5)]


def _rows():
    rows = []
    for probs in PROBS:
        value, zeros, excluded = log_p_inf(probs)
        rows.append({"log_p_inf": value, "answer_tokens": len(probs), "zero_tokens": zeros, "excluded": excluded})
    return rows


def _partial_from_pairwise(x, y, z) -> float:
    """The textbook partial correlation from the three pairwise Spearman ρ (an independent route)."""
    rxy, rxz, ryz = spearmanr(x, y).statistic, spearmanr(x, z).statistic, spearmanr(y, z).statistic
    return (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))


def test_the_three_scores_match_scipy_on_the_items_the_zero_rule_keeps():
    scores = correlations(_rows(), MODEL)
    kept = [i for i, p in enumerate(PROBS) if any(p)]  # item 5 has only P∞ = 0 tokens
    assert len(kept) == 11
    inf = [sum(math.log(p) for p in PROBS[i] if p > 0) for i in kept]
    inf_mean = [inf[k] / sum(p > 0 for p in PROBS[i]) for k, i in enumerate(kept)]
    mod = [MODEL[i][0] for i in kept]
    length = [MODEL[i][1] for i in kept]

    authors = spearmanr(inf, mod)
    assert scores[METRIC]["rho"] == pytest.approx(authors.statistic, abs=1e-12)
    assert scores[METRIC]["p"] == pytest.approx(authors.pvalue, rel=1e-9)
    per_token = spearmanr(inf_mean, [m / n for m, n in zip(mod, length)])
    assert scores[METRIC_PER_TOKEN]["rho"] == pytest.approx(per_token.statistic, abs=1e-12)
    assert scores[METRIC_PARTIAL]["rho"] == pytest.approx(_partial_from_pairwise(inf, mod, length), abs=1e-12)
    assert {s["n"] for s in scores.values()} == {11}
    # the variants are different numbers, not the authors' under other names
    assert len({round(s["rho"], 6) for s in scores.values()}) == 3


def test_a_score_that_only_tracks_length_has_no_partial_correlation():
    length = np.arange(1, 21)
    model = -3.0 * length                      # the model side is length alone
    infgram = np.sin(length * 1.7)             # the ∞-gram side is unrelated noise
    assert spearmanr(infgram, model).statistic != 0
    result = partial_spearman(infgram, model, length)
    assert math.isnan(result["rho"]) and "length" in result["reason"]


def test_the_partial_spearman_p_value_is_that_of_a_correlation_with_one_degree_of_freedom_less():
    rng = np.random.default_rng(0)
    z = rng.normal(size=40)
    x, y = z + rng.normal(size=40), z + rng.normal(size=40)
    result = partial_spearman(x, y, z)
    rho = _partial_from_pairwise(x, y, z)
    assert result["rho"] == pytest.approx(rho, abs=1e-12)
    # scipy's Pearson p-value for n − 1 points has n − 3 degrees of freedom, as a partial ρ does
    from scipy.stats import pearsonr

    fake = pearsonr(*_with_correlation(rho, 39))
    assert result["p"] == pytest.approx(fake.pvalue, rel=1e-6)


def _with_correlation(rho: float, n: int):
    """Two series of n points whose Pearson correlation is exactly rho."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=n), rng.normal(size=n)
    a = (a - a.mean()) / np.linalg.norm(a - a.mean())
    b = b - b.mean() - (b - b.mean()) @ a * a
    b /= np.linalg.norm(b)
    return a, rho * a + math.sqrt(1 - rho * rho) * b


def test_too_few_items_or_a_constant_length_give_nan_with_a_reason():
    assert math.isnan(partial_spearman([1, 2, 3], [3, 1, 2], [1, 2, 3])["rho"])
    constant = partial_spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [7, 7, 7, 7, 7])
    assert math.isnan(constant["rho"]) and constant["reason"]
