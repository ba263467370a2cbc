"""Checkpoint series: registries, branch and folder names, selection. No weights, no network."""

from __future__ import annotations

import json

import pytest

from geowh.errors import InputError
from geowh.ingest.sources.series import (
    FAMILIES,
    PYTHIA_TOKENS_PER_STEP,
    local_step,
    parse_olmo_branch,
    resolve_series,
    select_checkpoints,
)


def test_pythia_has_154_revisions_with_the_published_steps():
    series = resolve_series("pythia-410m")
    steps = [r.step for r in series.checkpoints]
    assert len(steps) == 154
    assert steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[-2:] == [142000, 143000] and all(b - a == 1000 for a, b in zip(steps[11:], steps[12:]))
    last = series.checkpoints[-1]
    assert (last.label, last.revision, last.repo) == ("step143000", "step143000", "EleutherAI/pythia-410m")
    assert last.tokens == 143000 * 2_097_152 == 143000 * PYTHIA_TOKENS_PER_STEP
    assert last.source == "hf://EleutherAI/pythia-410m@step143000"


def test_pythia_deduped_variants_exist_except_for_14m_and_31m():
    assert resolve_series("pythia-1.4b-deduped").checkpoints[0].repo == "EleutherAI/pythia-1.4b-deduped"
    models = FAMILIES["pythia"].models
    assert "pythia-14m" in models and "pythia-14m-deduped" not in models and "pythia-31m-deduped" not in models
    assert len(models) == 10 + 8
    with pytest.raises(InputError, match="unknown model"):
        resolve_series("pythia-31m-deduped")


@pytest.mark.parametrize(
    "branch, stage, step, tokens, ingredient",
    [
        ("stage1-step1000-tokens5B", "pretrain", 1000, 5e9, None),
        ("stage1-step928646-tokens3896B", "pretrain", 928646, 3896e9, None),
        ("stage2-ingredient2-step11931-tokens50B", "mid", 11931, 50e9, 2),
        ("step150-tokens1B", "pretrain", 150, 1e9, None),  # early unprefixed branches
        ("step600-tokens3B", "pretrain", 600, 3e9, None),  # off-grid step
        ("stage1-step5000-tokens10.5B", "pretrain", 5000, 10.5e9, None),
        ("stage1-step1000", "pretrain", 1000, None, None),
    ],
)
def test_olmo2_branch_names_parse(branch, stage, step, tokens, ingredient):
    parsed = parse_olmo_branch(branch)
    assert (parsed.stage, parsed.step, parsed.tokens, parsed.ingredient) == (stage, step, tokens, ingredient)


@pytest.mark.parametrize("branch", ["main", "stage1", "step-final", "v1.0"])
def test_non_checkpoint_branches_do_not_parse(branch):
    assert parse_olmo_branch(branch) is None


def test_olmo_aliases_resolve_to_the_olmo2_series_in_stage_then_step_order():
    branches = ["main", "stage2-ingredient1-step1000-tokens5B", "stage1-step2000-tokens9B",
                "step150-tokens1B", "stage2-ingredient1-step500-tokens3B", "stage1-step1000-tokens5B"]
    series = resolve_series("olmo-7b", revisions=branches)
    assert series.model == "olmo-2-7b" and series.hub_repo == "allenai/OLMo-2-1124-7B"
    assert [r.label for r in series.checkpoints] == [
        "step150-tokens1B", "stage1-step1000-tokens5B", "stage1-step2000-tokens9B",
        "stage2-ingredient1-step500-tokens3B", "stage2-ingredient1-step1000-tokens5B",
    ]
    assert [r.stage_order for r in series.checkpoints] == [0, 0, 0, 1, 1]
    assert series.skipped == ("main",)


def test_branches_come_from_the_hub_cache_when_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    refs = tmp_path / "models--allenai--OLMo-2-0425-1B" / "refs"
    refs.mkdir(parents=True)
    for name in ("main", "stage1-step10000-tokens21B", "stage1-step20000-tokens42B"):
        (refs / name).write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    series = resolve_series("olmo-1b")
    assert [r.step for r in series.checkpoints] == [10000, 20000]
    assert [r.tokens for r in series.checkpoints] == [21e9, 42e9]
    with pytest.raises(InputError, match="cannot list the branches"):
        resolve_series("olmo-13b")


def test_tulu3_is_one_stage_ordered_series():
    series = resolve_series("tulu-3-8b")
    assert [(r.label, r.stage, r.stage_order, r.repo) for r in series.checkpoints] == [
        ("base", "pretrain", 0, "meta-llama/Llama-3.1-8B"),
        ("sft", "sft", 2, "allenai/Llama-3.1-Tulu-3-8B-SFT"),
        ("dpo", "dpo", 3, "allenai/Llama-3.1-Tulu-3-8B-DPO"),
        ("rlvr", "rlvr", 4, "allenai/Llama-3.1-Tulu-3-8B"),
    ]


def test_any_hub_model_takes_explicit_revisions():
    series = resolve_series("hf:EleutherAI/pythia-70m", revisions=["step2000", "step1000"])
    assert series.model == "EleutherAI/pythia-70m" and series.family == "hf"
    assert [(r.label, r.step) for r in series.checkpoints] == [("step2000", 2000), ("step1000", 1000)]
    assert resolve_series("hf:EleutherAI/pythia-70m", revisions=["step1"], name="p70").model == "p70"


@pytest.mark.parametrize(
    "folder, step",
    [("checkpoint-1000", 1000), ("step1000", 1000), ("step1000-tokens4B", 1000), ("global_step1000", 1000),
     ("iter_0001000", 1000), ("ckpt-7", 7), ("step=1200", 1200), ("epoch=0-step=300", 300),
     ("stage1-step42-tokens1B", 42), ("final", None), ("checkpoint", None)],
)
def test_local_folder_names_give_the_step(folder, step):
    assert local_step(folder) == step


def _fake_checkpoint(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")


def test_a_local_run_lists_its_checkpoint_folders_in_step_order(tmp_path):
    run = tmp_path / "my-run"
    for name in ("checkpoint-200", "checkpoint-1000", "checkpoint-30", "final"):
        _fake_checkpoint(run / name)
    (run / "logs").mkdir()
    series = resolve_series(str(run))
    assert series.model == "my-run" and series.family == "local"
    assert [(r.label, r.step) for r in series.checkpoints] == [
        ("checkpoint-30", 30), ("checkpoint-200", 200), ("checkpoint-1000", 1000), ("final", None)
    ]
    assert series.checkpoints[0].source.startswith("file://") and series.skipped == ("logs",)

    one = resolve_series(str(run / "checkpoint-200"))
    assert one.model == "my-run" and [r.label for r in one.checkpoints] == ["checkpoint-200"]
    assert resolve_series(str(run / "final"), name="x").model == "x"

    with pytest.raises(InputError, match="no checkpoint folders"):
        resolve_series(str(run / "logs"))


def test_a_train_mini_run_gives_each_checkpoint_its_tokens(tmp_path):
    run = tmp_path / "mini"
    for name in ("step0", "step4", "step16"):
        _fake_checkpoint(run / name)
    (run / "train_config.json").write_text('{"plan": {"tokens_per_step": 2048}}')
    assert [r.tokens for r in resolve_series(str(run)).checkpoints] == [0.0, 4 * 2048.0, 16 * 2048.0]
    (run / "train_config.json").unlink()
    assert [r.tokens for r in resolve_series(str(run)).checkpoints] == [None, None, None]


@pytest.fixture
def pythia():
    return resolve_series("pythia-70m").checkpoints


def test_selection_by_list_range_stride_and_log(pythia):
    assert [r.step for r in select_checkpoints(pythia, "step2000,1000")] == [1000, 2000]
    assert [r.step for r in select_checkpoints(pythia, "1000:5000:2000")] == [1000, 3000, 5000]
    assert [r.step for r in select_checkpoints(pythia, "0:8")] == [0, 1, 2, 4, 8]
    assert [r.step for r in select_checkpoints(pythia, "140000:")] == [140000, 141000, 142000, 143000]
    log = [r.step for r in select_checkpoints(pythia, "log:10")]
    assert len(log) == 10 and log[0] == 0 and log[-1] == 143000 and log == sorted(log)
    assert len(select_checkpoints(pythia, "all")) == 154
    for bad in ("step3", "log:x", "520:600"):
        with pytest.raises(InputError):
            select_checkpoints(pythia, bad)


def test_selection_by_glob_pattern():
    series = resolve_series(
        "olmo-2-7b", revisions=["stage1-step1000-tokens5B", "stage2-ingredient1-step10-tokens1B"], checkpoints="stage2-*"
    )
    assert [r.label for r in series.checkpoints] == ["stage2-ingredient1-step10-tokens1B"]


def test_checkpoints_command_lists_pythias_154_revisions(cli):
    result = cli(["checkpoints", "pythia-410m", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 154 and rows[5] == {
        "checkpoint": "step16", "step": 16, "tokens": 16 * 2_097_152, "stage": "pretrain",
        "revision": "step16", "repo": "EleutherAI/pythia-410m", "path": None,
    }


def test_models_command_lists_the_families(cli):
    result = cli(["models", "--json"])
    assert result.exit_code == 0, result.output
    families = {f["family"]: f for f in json.loads(result.output)}
    assert set(families) == {"pythia", "olmo-2", "olmo-2-instruct", "tulu-3", "hf", "local"}
    assert "olmo-2-13b" in families["olmo-2"]["models"]
    table = cli(["models"])
    assert table.exit_code == 0 and "pythia-12b-deduped" in table.output


def test_an_unknown_model_is_one_clear_error(cli):
    result = cli(["checkpoints", "gpt-17"])
    assert result.exit_code == 1 and "unknown model 'gpt-17'" in result.output
