"""The phases' noise threshold decides a case on its own: a change above `min_change` but within
`noise_k` residual standard deviations is noise, not a phase (issue 17.6: every other phases test
has its noise below `min_change`, so dropping the noise term passed them all)."""

from __future__ import annotations

import numpy as np
import pytest

from geowh.queries.phases import PhaseParams, segment

T = np.linspace(0, 4, 40)  # log10(step + 1)
# Expansion by 0.5, then a fall of 0.09: above min_change (0.05), so a phase where it is quiet.
TREND = np.where(T < 2.6, 0.5 * T / 2.6, 0.5 - 0.09 * (T - 2.6) / 1.4)


def _noisy(sd: float) -> np.ndarray:
    return TREND + np.random.default_rng(0).normal(0, sd, T.size)


def test_a_small_fall_is_a_phase_when_the_signal_is_quiet():
    quiet = segment(T, _noisy(0.005))
    assert len(quiet.change) == 2 and quiet.change[1] < -PhaseParams().min_change
    assert quiet.threshold == PhaseParams().min_change  # 3σ is below min_change: min_change decides


def test_the_same_fall_within_three_residual_sds_is_noise_and_merged():
    y = _noisy(0.04)
    unguarded = segment(T, y, PhaseParams(noise_k=0))
    assert len(unguarded.change) == 2 and abs(unguarded.change[1]) > PhaseParams().min_change  # min_change alone keeps it
    noisy = segment(T, y)
    assert noisy.threshold == pytest.approx(3 * noisy.sigma) and noisy.threshold > abs(unguarded.change[1])
    assert len(noisy.change) == 1 and noisy.change[0] > 0  # one expansion: the noise decided
