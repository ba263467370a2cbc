"""The test helpers themselves: a tiny series asked for twice is built once, and each caller owns its copy."""

from __future__ import annotations

import tiny
from tiny import corrupt, save_series

SMALL = dict(steps=(0, 1), layers=1, d=16, heads=2, vocab=1000)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_second_series_with_the_same_arguments_is_a_copy_of_a_fresh_build_that_the_caller_owns(tmp_path):
    import torch

    first = save_series(tmp_path / "first", **SMALL)
    after_first = torch.rand(4)
    corrupt(first / "step1")  # tests truncate and rewrite their checkpoints: the next caller must not see it
    second = save_series(tmp_path / "second", **SMALL)
    assert torch.equal(torch.rand(4), after_first)  # torch's generator left as a fresh build leaves it
    tiny._build_series(tmp_path / "fresh", "gpt-neox", SMALL["steps"], "step{step}", 0, True,
                       {k: v for k, v in SMALL.items() if k != "steps"})
    assert _files(second) == _files(tmp_path / "fresh") != _files(first)
