"""`geowh posttrain`: stage schedules, the derived tasks, the reward, the stage-ordered folder, resuming."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny import english_docs, save_series

from geowh.checkers import TaskItem, read_task
from geowh.errors import InputError
from geowh.ingest.sources.series import resolve_series
from geowh.repro.posttrain import (
    PosttrainConfig,
    check_stages,
    derive_tasks,
    posttrain,
    stage_steps,
    verifiable_reward,
)

# Phrases whose next word is certain: each word pair of them is followed by one word only.
SENTENCES = ["quick brown fox", "lazy sleepy dog", "green garden hose", "broken window pane", "silver spoon handle",
             "winter coat pocket", "paper plane wing", "river stone bridge", "candle light glow", "music box melody",
             "yellow taxi driver", "ocean wave crest"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real docstrings and some repeated sentences, so that frequent phrases exist."""
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n".join(english_docs(400) + SENTENCES * 30) + "\n")
    return path


@given(total=st.integers(1, 5000), count=st.integers(1, 40))
def test_each_stage_saves_its_first_steps_and_its_last(total, count):
    steps = stage_steps(total, count)
    assert len(steps) == min(count, total)
    assert steps == sorted(set(steps)) and steps[-1] == total
    if count >= 2:
        assert steps[0] == 1
    if count >= 3 and total >= 3:
        assert steps[1] == 2  # the stage's first steps, where a new objective moves the geometry most


def test_the_schedule_is_log_spaced():
    assert stage_steps(200, 8) == [1, 2, 5, 10, 21, 44, 94, 200]


def test_stages_are_a_subset_in_the_papers_order():
    assert check_stages(["sft", "rlvr"]) == ("sft", "rlvr")
    for bad in (["dpo", "sft"], ["sft", "sft"], ["ppo"], []):
        with pytest.raises(InputError, match="--stages"):
            check_stages(bad)


def test_the_tasks_are_derived_offline_and_held_out_items_are_never_trained_on(tmp_path, corpus):
    config = PosttrainConfig(corpus=(str(corpus),), train_items=300, eval_items=40)
    described = derive_tasks(tmp_path, config)
    tasks = tmp_path / "tasks"
    train, held_out, ood = (read_task(tasks / f"{n}.jsonl") for n in ("copy-train", "copy", "phrase"))
    assert (len(train), len(held_out)) == (300, 40) and len(ood) >= 10
    assert not {i.prompt for i in train} & {i.prompt for i in held_out}
    assert all(i.checker == "exact" and i.prompt == f"Copy: {i.answer} =>" for i in train + held_out)
    assert all(i.checker == "word" for i in ood)
    assert {i.prompt for i in ood} >= {s.rsplit(" ", 1)[0] for s in SENTENCES}  # the repeated phrases
    assert next(i for i in ood if i.prompt == "quick brown").answer == "fox"
    pairs = [json.loads(line) for line in (tasks / "copy-pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 300 and {p["rejected_by"] for p in pairs} == {"swap", "drop", "replace"}
    assert all(p["rejected"] != p["chosen"] and p["chosen"] == t.answer for p, t in zip(pairs, train))
    assert described["reward"]["checker"] == "exact" and described["out_of_distribution"]["task"] == "phrase"
    # Written once: a second call returns the manifest and leaves the files as they are.
    before = (tasks / "copy.jsonl").read_text()
    assert derive_tasks(tmp_path, PosttrainConfig(corpus=(str(corpus),), seed=9)) == described
    assert (tasks / "copy.jsonl").read_text() == before


def test_the_reward_is_the_items_checker():
    rewards = verifiable_reward(
        prompts=["Copy: a b =>"] * 4 + ["the value"],
        completions=[" a b\nmore", " b a", " a b c", "a", " of the"],
        answer=["a b"] * 4 + ["of"], checker=["exact"] * 4 + ["word"], item=list("01234"))
    assert rewards == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert rewards == [float(TaskItem(i, p, a, c).correct(d)) for i, p, a, c, d in zip(
        "01234", ["Copy: a b =>"] * 4 + ["the value"], ["a b"] * 4 + ["of"], ["exact"] * 4 + ["word"],
        [" a b\nmore", " b a", " a b c", "a", " of the"])]


def test_a_posttrain_folder_reads_as_one_stage_ordered_series(tmp_path):
    run = tmp_path / "post"
    names = ["rlvr-step2", "dpo-step1", "sft-step10", "sft-step1", "pretrain-step30", "rlvr-step1"]
    for name in names:  # the reader lists folders with a config.json; the weights are read by ingest
        (run / name).mkdir(parents=True)
        (run / name / "config.json").write_text("{}")
    (run / "tasks").mkdir()
    refs = resolve_series(str(run)).checkpoints
    assert [r.label for r in refs] == ["pretrain-step30", "sft-step1", "sft-step10", "dpo-step1", "rlvr-step1",
                                       "rlvr-step2"]
    assert [r.stage for r in refs] == ["pretrain", "sft", "sft", "dpo", "rlvr", "rlvr"]
    assert [r.step for r in refs] == [30, 1, 10, 1, 1, 2]
    assert resolve_series(str(run / "dpo-step1")).checkpoints[0].stage == "dpo"


def test_bad_input_is_one_clear_line(tmp_path, cli):
    shown = cli(["posttrain", tmp_path / "nothing", tmp_path / "out"])
    assert shown.exit_code == 1 and "is not a checkpoint folder" in shown.output
    assert len(shown.output.strip().splitlines()) == 1
    no_tokenizer = save_series(tmp_path / "run", steps=(0,), d=16, heads=2, tokenizer_in_each=False) / "step0"
    shown = cli(["posttrain", no_tokenizer, tmp_path / "out"])
    assert shown.exit_code == 1 and "holds no tokenizer" in shown.output
    shown = cli(["posttrain", no_tokenizer, tmp_path / "out", "--stages", "rlvr,sft"])
    assert shown.exit_code == 1 and "in the order sft,dpo,rlvr" in shown.output


@pytest.mark.slow
def test_posttrain_runs_every_stage_resumes_and_restarts_an_interrupted_one(tmp_path, corpus):
    base = save_series(tmp_path / "run", steps=(64,), d=16, heads=2) / "step64"
    out = tmp_path / "post"
    config = PosttrainConfig(steps=3, checkpoints=2, batch_size=4, generations=2, train_items=24, eval_items=8,
                             corpus=(str(corpus),), device="cpu")
    first = posttrain(base, out, config)
    assert first.checkpoints == ["pretrain-step64", "sft-step1", "sft-step3", "dpo-step1", "dpo-step3", "rlvr-step1",
                                 "rlvr-step3"]
    assert {s: d["status"] for s, d in first.stages.items()} == {"sft": "trained", "dpo": "trained", "rlvr": "trained"}
    assert "loss" in first.stages["sft"]["last_log"] and "reward" in first.stages["rlvr"]["last_log"]
    refs = resolve_series(str(out)).checkpoints
    assert [r.stage for r in refs] == ["pretrain"] + ["sft"] * 2 + ["dpo"] * 2 + ["rlvr"] * 2
    weights = {n: (out / n / "model.safetensors").read_bytes() for n in first.checkpoints}
    # SFT moves the weights; GRPO on a random model earns reward 0 in every group, so no advantage and no update.
    assert weights["sft-step3"] != weights["pretrain-step64"] and weights["dpo-step3"] != weights["sft-step3"]

    again = posttrain(base, out, config)
    assert {d["status"] for d in again.stages.values()} == {"reused"}
    # DPO interrupted: its state unfinished, a half-written checkpoint left behind.
    state = json.loads((out / "posttrain.json").read_text())
    state["stages"]["dpo"]["finished"] = False
    (out / "posttrain.json").write_text(json.dumps(state))
    (out / ".partial" / "dpo-step2").mkdir(parents=True)
    resumed = posttrain(base, out, config)
    assert {s: d["status"] for s, d in resumed.stages.items()} == {"sft": "reused", "dpo": "trained", "rlvr": "trained"}
    assert not (out / ".partial").exists()
    assert (out / "sft-step3" / "model.safetensors").read_bytes() == weights["sft-step3"]
    with pytest.raises(InputError, match="other settings"):
        posttrain(base, out, PosttrainConfig(steps=4, checkpoints=2, batch_size=4, generations=2, train_items=24,
                                             eval_items=8, corpus=(str(corpus),)))
