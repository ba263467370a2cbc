"""OLMo-2 instruct lineages: base → SFT → DPO → RLVR as one stage-ordered series, offline against hub caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny import save_hub_cache, write_docs

from geowh.ingest.sources.series import FAMILIES, LINEAGE_STAGES, resolve_series

BASE = "allenai/OLMo-2-1124-7B"
BASE_BRANCHES = ["main", "stage1-step1000-tokens5B", "stage1-step2000-tokens9B",
                 "stage2-ingredient2-step30-tokens1B", "stage2-ingredient1-step30-tokens1B",
                 "stage2-ingredient1-step10-tokens1B"]
STAGE_LABELS = ["stage1-step2000-tokens9B", "stage2-ingredient1-step30-tokens1B",
                "stage2-ingredient2-step30-tokens1B", "base", "sft", "dpo", "rlvr"]


def _refs_only(cache, repo, revisions):
    """A hub cache that knows `repo`'s branches (refs) but holds no weights: enough to list them."""
    refs = cache / ("models--" + repo.replace("/", "--")) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    for name in revisions:
        (refs / name).write_text("0" * 40)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_the_7b_lineage_is_base_then_sft_dpo_rlvr_in_stage_order(offline_cache):
    _refs_only(offline_cache, BASE, BASE_BRANCHES)
    series = resolve_series("olmo-7b-instruct")
    assert series.model == "olmo-2-7b-instruct" and series.family == "olmo-2-instruct"
    assert [r.label for r in series.checkpoints] == STAGE_LABELS
    assert [r.stage for r in series.checkpoints] == ["pretrain", "mid", "mid", "mid", "sft", "dpo", "rlvr"]
    orders = [r.stage_order for r in series.checkpoints]
    assert orders == sorted(orders) and orders[-3:] == [2, 3, 4]
    assert [(r.repo, r.revision) for r in series.checkpoints[-4:]] == [
        (BASE, "main"), (f"{BASE}-SFT", "main"), (f"{BASE}-DPO", "main"), (f"{BASE}-Instruct", "main")]
    assert series.hub_repo == f"{BASE}-Instruct" and series.skipped == ()


def test_the_1b_and_13b_lineages_start_from_their_own_base_repos(offline_cache):
    _refs_only(offline_cache, "allenai/OLMo-2-0425-1B", ["main", "stage1-step10000-tokens21B"])
    _refs_only(offline_cache, "allenai/OLMo-2-1124-13B", ["main", "stage1-step5-tokens1B"])
    one = resolve_series("olmo-1b-instruct").checkpoints
    assert [r.repo for r in one] == ["allenai/OLMo-2-0425-1B"] * 2 + [
        f"allenai/OLMo-2-0425-1B-{s}" for s in ("SFT", "DPO", "Instruct")]
    assert resolve_series("olmo-13b-instruct").checkpoints[-1].repo == "allenai/OLMo-2-1124-13B-Instruct"


def test_a_post_training_repo_that_publishes_step_branches_lists_them_before_its_main(offline_cache):
    _refs_only(offline_cache, BASE, ["main", "stage1-step1000-tokens5B"])
    _refs_only(offline_cache, f"{BASE}-SFT", ["main", "step200", "step100"])
    labels = [(r.label, r.stage, r.step) for r in resolve_series("olmo-7b-instruct").checkpoints]
    assert labels[2:5] == [("sft-step100", "sft", 100), ("sft-step200", "sft", 200), ("sft", "sft", None)]


def test_without_the_base_branches_the_lineage_says_how_to_get_them(offline_cache):
    from geowh.errors import InputError

    with pytest.raises(InputError, match="cannot list the branches of allenai/OLMo-2-1124-7B"):
        resolve_series("olmo-7b-instruct")


def test_models_lists_the_lineages(cli):
    result = cli(["models", "--json"])
    families = {f["family"]: f for f in json.loads(result.output)}
    assert families["olmo-2-instruct"]["models"] == list(FAMILIES["olmo-2-instruct"].models) == [
        "olmo-2-1b-instruct", "olmo-2-7b-instruct", "olmo-2-13b-instruct"]


@pytest.mark.slow
def test_checkpoints_and_ingest_of_a_lineage_run_offline_against_a_hub_cache_of_tiny_models(tmp_path):
    """`geowh checkpoints … --json` lists the lineage without downloading; `geowh ingest` stores it
    as one series whose checkpoints carry their stage and its order."""
    cache = tmp_path / "hub"
    save_hub_cache(cache, BASE, ["stage1-step1000-tokens5B", "main"], arch="olmo-2")
    for _, _, suffix in LINEAGE_STAGES:
        save_hub_cache(cache, BASE + suffix, ["main"], arch="olmo-2", seed=len(suffix))
    docs = write_docs(tmp_path / "docs.txt", limit=40)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    geowh = [sys.executable, "-m", "geowh"]
    listed = subprocess.run([*geowh, "checkpoints", "olmo-7b-instruct", "--json"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [(c["checkpoint"], c["stage"]) for c in json.loads(listed.stdout)] == [
        ("stage1-step1000-tokens5B", "pretrain"), ("base", "mid"), ("sft", "sft"), ("dpo", "dpo"), ("rlvr", "rlvr")]
    db = tmp_path / "w.duckdb"
    done = subprocess.run([*geowh, "ingest", "olmo-7b-instruct", "--probe", str(docs), "--n", "30", "--max-len", "16",
                           "--db", str(db), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from geowh.warehouse import Warehouse

    rows = Warehouse(db).query(
        "select checkpoint, stage, stage_order, source from checkpoints order by stage_order, checkpoint"
    ).rows()
    assert [(c, s, o) for c, s, o, _ in rows] == [
        ("stage1-step1000-tokens5B", "pretrain", 0), ("base", "mid", 1), ("sft", "sft", 2), ("dpo", "dpo", 3),
        ("rlvr", "rlvr", 4)]
    assert rows[2][3] == f"hf://{BASE}-SFT@main"
    assert Warehouse(db).query("select count(*) from metrics where metric = 'rankme'").item() == 5
