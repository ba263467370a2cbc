"""The batched extraction's fast path: right-padded batches of a causal model run without a mask."""

from __future__ import annotations

import pytest
from tiny import tiny_model

torch = pytest.importorskip("torch")


def _masks_seen(padding_side: str) -> list[bool]:
    """Whether each forward call of a padded extraction received an attention mask."""
    from geowh.ingest.features.extract import extract_features

    model = tiny_model(d=32, vocab=1000).base_model
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("attention_mask") is not None),
                                    with_kwargs=True)
    ids = [list(range(5, 5 + n)) for n in (12, 7, 3, 9)]  # different lengths: every batch is padded
    list(extract_features(model, ids, pad_id=0, layers=[2], batch_size=4, padding_side=padding_side))
    return seen


def test_right_padded_batches_run_without_a_mask_so_attention_keeps_its_causal_fast_path():
    # A mask sends SDPA to materialise (batch, heads, seq, seq) scores: on the CPU that made
    # batches slower than one sequence at a time (docs/scale.md). The features stay those of
    # one sequence at a time (tests/test_ingest.py compares them, both padding sides).
    assert _masks_seen("right") == [False]


def test_left_padded_batches_still_pass_the_mask():
    assert _masks_seen("left") == [True]
