"""The paper's post-training claims, checked from a stage-ordered series' geometry and evals rows."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from geowh.queries import import_metrics
from geowh.queries.claims import claims, claims_table, z_verdict
from geowh.queries.phases import phases

# base → sft → dpo → rlvr: RankMe up, up, down (the paper's directions), two checkpoints per stage.
STAGES = ["pretrain"] * 6 + ["sft", "sft", "dpo", "dpo", "rlvr", "rlvr"]
STEPS = [0, 1, 2, 4, 8, 16, 1, 10, 1, 10, 1, 10]
RANKME = [30, 20, 25, 30, 28, 27, 32, 36, 38, 40, 35, 30]
LABELS = [f"step{s}" if st == "pretrain" else f"{st}-step{s}" for s, st in zip(STEPS, STAGES)]


def series(wh, tmp_path, model="post", stages=STAGES, rankme=RANKME, steps=STEPS):
    pl.DataFrame({"model": model, "step": steps, "probe": "p", "layer": 2, "rankme": rankme,
                  "alpha_req": [1 / math.log(r) for r in rankme], "stage": stages}).write_csv(tmp_path / "m.csv")
    import_metrics(wh, tmp_path / "m.csv")


def evals(wh, model, values: dict[tuple[str, str], list[float | None]], n=200, checkpoints=LABELS):
    """evals rows: (task, metric) → a value per checkpoint; proportions get the binomial stderr over n items."""
    rows = []
    for (task, metric), per in values.items():
        for label, v in zip(checkpoints, per):
            if v is None:
                continue
            se = math.sqrt(v * (1 - v) / n) if metric in ("accuracy",) or metric.startswith("pass@") else 0.01
            rows.append({"model": model, "checkpoint": label, "step": None, "task": task, "metric": metric,
                         "filter": "none", "num_fewshot": 0, "value": v, "stderr": se})
    wh.write({"evals": pl.DataFrame(rows)})


# The behaviour of the paper: SFT/DPO raise copy, lower phrase; RLVR raises pass@1, narrows pass@8 − pass@1 and distinct-n.
PAPER = {
    ("copy", "accuracy"): [0.02] * 6 + [0.3, 0.6, 0.62, 0.7, 0.72, 0.8],
    ("phrase", "accuracy"): [0.5] * 6 + [0.4, 0.3, 0.28, 0.2, 0.2, 0.2],
    ("copy", "pass@1"): [0.02] * 6 + [0.3, 0.6, 0.62, 0.7, 0.75, 0.85],
    ("copy", "pass@8"): [0.1] * 6 + [0.6, 0.9, 0.9, 0.92, 0.9, 0.88],
    ("copy", "distinct-1"): [0.9] * 6 + [0.8, 0.7, 0.7, 0.7, 0.5, 0.3],
    ("copy", "distinct-2"): [0.95] * 6 + [0.9, 0.8, 0.8, 0.8, 0.6, 0.4],
}


def verdicts(found) -> dict[tuple[str, str], str]:
    return {(r["stage"], r["claim"]): r["verdict"] for r in claims_table(found)}


def test_the_papers_behaviour_checks_every_claim(wh, tmp_path):
    series(wh, tmp_path)
    evals(wh, "post", PAPER)
    found = claims(wh, "post", phases(wh, "post", store=False))
    assert [s.stage for s in found] == ["sft", "dpo", "rlvr"]
    assert set(verdicts(found).values()) == {"✓"}, verdicts(found)
    sft = found[0]
    # SFT is measured from the base's last checkpoint to its own last one.
    assert (sft.start_checkpoint, sft.end_checkpoint) == ("step16", "sft-step10")
    copy = next(b for b in sft.behaviour if (b["task"], b["metric"]) == ("copy", "accuracy"))
    assert copy["start"] == pytest.approx(0.02) and copy["end"] == pytest.approx(0.6)
    # DPO starts where SFT ended: a claim on the wrong span would see SFT's jump.
    assert found[1].start_checkpoint == "sft-step10"
    gap = next(c for c in found[2].claims if c["claim"].startswith("diversity: pass@k"))
    assert gap["metric"] == "pass@8 − pass@1"
    assert gap["start"] == pytest.approx(0.92 - 0.7) and gap["end"] == pytest.approx(0.88 - 0.85)


def test_behaviour_against_the_paper_is_a_cross_not_a_tick(wh, tmp_path):
    series(wh, tmp_path)
    against = dict(PAPER)
    against[("copy", "accuracy")] = [0.9] * 6 + [0.6, 0.3, 0.3, 0.3, 0.3, 0.3]  # SFT lowers in-distribution
    against[("copy", "distinct-1")] = [0.5] * 6 + [0.5, 0.5, 0.5, 0.5, 0.7, 0.9]  # RLVR widens diversity
    evals(wh, "post", against)
    found = verdicts(claims(wh, "post", phases(wh, "post", store=False)))
    assert found[("sft", "in-distribution ↑")] == "✗"
    assert found[("rlvr", "diversity: distinct-1 ↓")] == "✗"
    assert found[("sft", "out-of-distribution ↓")] == "✓"


def test_a_reversed_stage_order_does_not_pass_as_the_papers(wh, tmp_path):
    # The same values with the stages named in reverse (rlvr first): geometry and behaviour move the other way.
    reverse = ["pretrain"] * 6 + ["rlvr", "rlvr", "dpo", "dpo", "sft", "sft"]
    series(wh, tmp_path, stages=reverse)
    labels = [f"step{s}" if st == "pretrain" else f"{st}-step{s}" for s, st in zip(STEPS, reverse)]
    evals(wh, "post", PAPER, checkpoints=labels)
    found = claims(wh, "post", phases(wh, "post", store=False))
    assert [s.stage for s in found] == ["sft", "dpo", "rlvr"]  # stage order, not the order of the rows
    # sft now holds the last two rows (copy 0.72, 0.8) and dpo the middle ones (0.62, 0.7): DPO lowers copy.
    assert (found[1].start_checkpoint, found[1].end_checkpoint) == ("sft-step10", "dpo-step10")
    assert verdicts(found)[("dpo", "in-distribution ↑")] == "✗"
    assert verdicts(found)[("rlvr", "reward (pass@1) ↑")] == "✗"  # 0.7 at dpo's end → 0.6 at rlvr's


def test_a_change_within_the_noise_is_not_significant_and_no_stderr_is_untested(wh, tmp_path):
    series(wh, tmp_path)
    small = dict(PAPER)
    small[("copy", "accuracy")] = [0.50] * 6 + [0.51, 0.52, 0.52, 0.52, 0.52, 0.52]
    evals(wh, "post", small, n=50)
    rows = [{"model": "post", "checkpoint": c, "step": None, "task": "copy", "metric": "entropy", "filter": "none",
             "num_fewshot": 0, "value": v, "stderr": None} for c, v in zip(LABELS, np.linspace(3, 1, 12))]
    wh.write({"evals": pl.DataFrame(rows)})
    found = claims(wh, "post", phases(wh, "post", store=False))
    assert verdicts(found)[("sft", "in-distribution ↑")] == "not significant"
    assert z_verdict(0.5, 0.6, None, 0.01, +1)["verdict"] == "untested"
    assert any(b["metric"] == "entropy" for b in found[0].behaviour)  # shown even though no claim tests it


def test_the_z_test_matches_the_formula():
    got = z_verdict(0.2, 0.3, 0.03, 0.04, +1)
    assert got["z"] == pytest.approx(0.1 / 0.05)
    assert got["p"] == pytest.approx(math.erfc(2 / math.sqrt(2)), abs=1e-6)  # 0.0455
    assert got["verdict"] == "✓"
    assert z_verdict(0.2, 0.3, 0.03, 0.04, -1)["verdict"] == "✗"
    assert z_verdict(0.2, 0.25, 0.03, 0.04, +1)["verdict"] == "not significant"  # z = 1


def test_task_options_pick_the_tasks_and_missing_ones_say_no_data(wh, tmp_path):
    series(wh, tmp_path)
    evals(wh, "post", {("mine", "accuracy"): PAPER[("copy", "accuracy")]})
    found = claims(wh, "post", phases(wh, "post", store=False), in_task="mine")
    assert verdicts(found)[("sft", "in-distribution ↑")] == "✓"
    assert verdicts(found)[("sft", "out-of-distribution ↓")] == "no data"


def test_a_pretraining_series_has_no_claims(wh, tmp_path):
    series(wh, tmp_path, stages=["pretrain"] * 12, steps=list(range(12)))
    assert claims(wh, "post") == []


def test_phases_prints_the_claims_table_and_json_carries_them(wh, tmp_path, cli):
    series(wh, tmp_path)
    evals(wh, "post", PAPER)
    shown = cli(["phases", "--model", "post", "--db", wh.path])
    assert shown.exit_code == 0, shown.output
    assert "the paper's post-training claims" in shown.output and "in-distribution ↑" in shown.output
    assert "✓" in shown.output
    as_json = cli(["phases", "--model", "post", "--db", wh.path, "--json"])
    rows = json.loads(as_json.stdout)
    stage_rows = [r for r in rows if r["stage"] in ("sft", "dpo", "rlvr")]
    assert [r["stage"] for r in stage_rows] == ["sft", "dpo", "rlvr"]
    assert all(c["verdict"] == "✓" for r in stage_rows for c in r["claims"])
    assert all("claims" not in r for r in rows if r["stage"] == "pretrain")
