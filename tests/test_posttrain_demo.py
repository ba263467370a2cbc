"""`geowh demo --post-training`: the demo's base → posttrain → ingest → phases and claims."""

from __future__ import annotations

import pytest
from test_posttrain import SENTENCES
from tiny import english_docs

from geowh.repro.posttrain import PosttrainConfig
from geowh.repro.posttrain_demo import PostDemoConfig, posttrain_demo
from geowh.repro.train import TrainConfig, train_mini


def test_post_training_starts_from_the_demos_own_run(cli, tmp_path):
    shown = cli(["demo", tmp_path / "d", "--post-training", "--long"])
    assert shown.exit_code == 1 and "--post-training starts from the demo's run: leave out --long" in shown.output
    shown = cli(["demo", "--shipped", "--post-training"])
    assert shown.exit_code == 1 and "leave out --post-training" in shown.output


@pytest.mark.slow
def test_the_post_training_demo_ingests_one_stage_ordered_series_and_checks_the_claims(tmp_path):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(english_docs(300) + SENTENCES * 30) + "\n")
    out = tmp_path / "demo"
    # The demo's base run, tiny: posttrain_demo reuses the run it finds in OUT.
    train_mini(out, TrainConfig(layers=1, d_model=32, vocab=300, batch_size=4, seq_len=32, checkpoints=2,
                                corpus=(str(corpus),), probe_docs=20), steps=4)
    config = PostDemoConfig(posttrain=PosttrainConfig(steps=2, checkpoints=1, batch_size=2, generations=2,
                                                      train_items=12, eval_items=6, corpus=(str(corpus),)),
                            n=16, samples=2, device="cpu", threads=1)
    summary = posttrain_demo(out, tmp_path / "w.duckdb", config)
    assert summary.base["status"] == "reused" and summary.base["checkpoint"].endswith("step4")
    assert summary.posttrain["checkpoints"] == ["pretrain-step4", "sft-step2", "dpo-step2", "rlvr-step2"]
    assert summary.ingest["ok"] == 4 and summary.model == "demo-post"
    assert [p["stage"] for p in summary.phases] == ["sft", "dpo", "rlvr"]
    assert [c["stage"] for c in summary.claims] == ["sft", "dpo", "rlvr"]
    geometry = [c for s in summary.claims for c in s["claims"] if c["test"].startswith("phase label")]
    assert len(geometry) == 3 and all(c["verdict"] in ("✓", "✗", "not significant") for c in geometry)
    if not summary.generation:  # before the generation measurement: the behaviour claims say so
        assert all(c["verdict"] == "no data" for s in summary.claims for c in s["claims"] if c not in geometry)
    again = posttrain_demo(out, tmp_path / "w.duckdb", config)
    assert again.ingest == {**summary.ingest, "ok": 0, "skipped": 4}
    assert set(again.posttrain["status"].values()) == {"reused"}
