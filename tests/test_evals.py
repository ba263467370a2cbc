"""Importing lm-evaluation-harness results: the real Pythia files (old layout) and the current layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import polars as pl
import pytest
from conftest import PYTHIA_EVALS

from geowh.errors import InputError
from geowh.queries import import_evals, read_results
from geowh.queries.evals import eval_model_name
from geowh.warehouse import Warehouse

PYTHIA_MODELS = sorted(
    ["pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b", "pythia-6.9b", "pythia-12b"]
    + [f"pythia-{s}-deduped" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")]
)


def raw_metric_count(files) -> int:
    """(task, metric) values in old-layout files, counted straight from the JSON."""
    total = 0
    for f in files:
        for values in json.loads(f.read_text())["results"].values():
            total += sum(1 for k, v in values.items() if not k.endswith("_stderr") and isinstance(v, (int, float)))
    return total


@pytest.fixture(scope="module")
def pythia(tmp_path_factory):
    wh = Warehouse(tmp_path_factory.mktemp("evals") / "w.duckdb")
    summary = import_evals(wh, [PYTHIA_EVALS])
    return wh, summary


def test_all_sixteen_pythia_models_import_zero_and_five_shot(pythia):
    wh, summary = pythia
    assert sorted(summary["model"].unique()) == PYTHIA_MODELS
    zero = summary.filter(pl.col("num_fewshot") == 0)
    five = summary.filter(pl.col("num_fewshot") == 5)
    assert zero.height == five.height == 16
    assert zero["files"].to_list() == [27] * 16 and zero["checkpoints"].to_list() == [27] * 16
    assert five["files"].to_list() == [15] * 16 and five["checkpoints"].to_list() == [15] * 16
    counts = wh.query("SELECT model, num_fewshot, count(*) AS n FROM evals GROUP BY ALL ORDER BY ALL")
    for folder in sorted(p for p in PYTHIA_EVALS.iterdir() if p.is_dir()):
        model = eval_model_name(folder.name)
        for shots, sub in ((0, "zero-shot"), (5, "five-shot")):
            expected = raw_metric_count(sorted((folder / sub).glob("*.json")))
            got = counts.filter((pl.col("model") == model) & (pl.col("num_fewshot") == shots))["n"].item()
            assert got == expected, (model, shots)
    assert counts.filter(pl.col("num_fewshot") == 0)["n"].to_list() == [4644] * 16
    assert counts.filter(pl.col("num_fewshot") == 5)["n"].to_list() == [1920] * 16


def test_pythia_410m_sciq_accuracy_at_step_143000_is_0_811(pythia):
    wh, _ = pythia
    row = wh.query(
        "SELECT value, stderr, checkpoint, harness_format FROM evals "
        "WHERE model = 'pythia-410m' AND task = 'sciq' AND metric = 'acc' AND step = 143000 AND num_fewshot = 0"
    ).row(0, named=True)
    assert row["value"] == pytest.approx(0.811)
    assert row["stderr"] == pytest.approx(0.012386784588117712)
    assert row["checkpoint"] == "step143000" and row["harness_format"] == "old"


def test_pythia_1b_bf16_files_are_pythia_1b_with_the_shot_count_from_their_config(pythia):
    wh, _ = pythia
    assert wh.query("SELECT count(*) AS n FROM models WHERE model LIKE '%bf16%' OR model LIKE '%v1.1%'")["n"].item() == 0
    # zero-shot/1b-bf16-5shot_step128.json is named five-shot but its config says num_fewshot 0
    shots = wh.query(
        "SELECT DISTINCT num_fewshot FROM evals WHERE model = 'pythia-1b' AND step = 128"
    )["num_fewshot"].to_list()
    assert shots == [0]
    steps = wh.query(
        "SELECT DISTINCT step FROM evals WHERE model = 'pythia-1b' AND num_fewshot = 0 ORDER BY step"
    )["step"].to_list()
    assert steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000] and steps[-1] == 143000


def test_imported_checkpoints_know_their_step_tokens_and_provenance(pythia):
    wh, _ = pythia
    ckpt = wh.query("SELECT * FROM checkpoints WHERE model = 'pythia-410m' AND checkpoint = 'step1000'").row(0, named=True)
    assert ckpt["step"] == 1000 and ckpt["tokens"] == 1000 * 2048 * 1024 and ckpt["stage"] == "pretrain"
    runs = wh.query("SELECT kind, status, config FROM runs WHERE model = 'pythia-410m'")
    assert runs.height == 42 and set(runs["kind"]) == {"import"} and set(runs["status"]) == {"ok"}
    assert "pythia-410m" in json.loads(runs["config"][0])["source"]


def test_importing_twice_changes_nothing(wh):
    folder = PYTHIA_EVALS / "pythia-70m"
    first = import_evals(wh, [folder])
    before = {t: wh.table(t).sort(pl.all()) for t in ("evals", "runs", "checkpoints", "models")}
    again = import_evals(wh, [folder])
    assert first["imported"].sum() == 42 and again["imported"].sum() == 0 and again["unchanged"].sum() == 42
    for table, frame in before.items():
        assert wh.table(table).sort(pl.all()).equals(frame), table


def test_a_file_in_neither_format_is_refused_by_name_and_nothing_is_written(wh, tmp_path):
    good = tmp_path / "good.json"
    shutil.copy(PYTHIA_EVALS / "pythia-70m" / "zero-shot" / "70m_step1000.json", good)
    bad = tmp_path / "notes.json"
    bad.write_text(json.dumps({"accuracy": 0.5, "model": "mine"}))
    with pytest.raises(InputError, match="notes.json is not an lm-evaluation-harness results file"):
        import_evals(wh, [good, bad])
    assert not wh.path.exists() or wh.query("SELECT count(*) AS n FROM evals")["n"].item() == 0


def test_the_cli_names_the_bad_file_and_exits_1(cli, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    result = cli(["import-evals", bad, "--db", tmp_path / "w.duckdb"])
    assert result.exit_code == 1
    assert "broken.json" in result.output and "Traceback" not in result.output


CURRENT = {
    "results": {
        "sciq": {"alias": "sciq", "acc,none": 0.893, "acc_stderr,none": 0.00978, "acc_norm,none": 0.851,
                 "acc_norm_stderr,none": 0.01127},
        "lambada_openai": {"alias": "lambada_openai", "perplexity,none": 6.21, "perplexity_stderr,none": 0.15,
                           "acc,none": 0.622, "acc_stderr,none": 0.00676},
        "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.031, "exact_match_stderr,strict-match": 0.0048,
                  "exact_match,flexible-extract": 0.045, "exact_match_stderr,flexible-extract": "N/A"},
    },
    "group_subtasks": {"sciq": [], "lambada_openai": [], "gsm8k": []},
    "configs": {"sciq": {"task": "sciq", "num_fewshot": 0}, "lambada_openai": {"task": "lambada_openai", "num_fewshot": 0},
                "gsm8k": {"task": "gsm8k", "num_fewshot": 5}},
    "versions": {"sciq": 1.0, "lambada_openai": 1.0, "gsm8k": 3.0},
    "n-shot": {"sciq": 0, "lambada_openai": 0, "gsm8k": 5},
    "higher_is_better": {"sciq": {"acc": True, "acc_norm": True}},
    "n-samples": {"sciq": {"original": 1000, "effective": 1000}},
    "config": {
        "model": "hf",
        "model_args": "pretrained=allenai/OLMo-2-1124-7B,revision=stage1-step928646-tokens3896B,dtype=bfloat16",
        "model_num_parameters": 7298981888, "model_dtype": "torch.bfloat16", "batch_size": "auto",
        "device": "cuda:0", "limit": None, "bootstrap_iters": 100000, "gen_kwargs": None,
    },
    "git_hash": "8f3a2b1",
    "date": 1736935200.0,
    "transformers_version": "4.47.1",
    "model_source": "hf",
    "model_name": "allenai/OLMo-2-1124-7B",
    "model_name_sanitized": "allenai__OLMo-2-1124-7B",
    "start_time": 2519.37, "end_time": 3611.82, "total_evaluation_time_seconds": "1092.45",
}


def test_the_current_lm_eval_layout_is_read_with_filters_shots_and_revision(tmp_path):
    path = tmp_path / "allenai__OLMo-2-1124-7B" / "results_2025-01-15T10-00-00.123456.json"
    path.parent.mkdir()
    path.write_text(json.dumps(CURRENT))
    parsed = read_results(path)
    assert parsed.format == "new" and parsed.harness_version == "8f3a2b1"
    assert parsed.model == "olmo-2-1124-7b"
    assert parsed.checkpoint == "stage1-step928646-tokens3896B" and parsed.step == 928646 and parsed.tokens == 3896e9
    rows = {(r["task"], r["metric"], r["filter"]): r for r in parsed.rows}
    assert len(rows) == 6  # alias strings and stderr keys are not metrics
    assert rows[("sciq", "acc", "none")]["value"] == 0.893 and rows[("sciq", "acc", "none")]["stderr"] == 0.00978
    assert rows[("gsm8k", "exact_match", "strict-match")]["num_fewshot"] == 5
    assert rows[("gsm8k", "exact_match", "flexible-extract")]["stderr"] is None  # "N/A"
    assert rows[("lambada_openai", "perplexity", "none")]["num_fewshot"] == 0


def test_current_layout_imports_next_to_the_old_one(wh, tmp_path, cli):
    path = tmp_path / "results_2025-01-15T10-00-00.123456.json"
    data = dict(CURRENT, config=dict(CURRENT["config"], model_args={"pretrained": "EleutherAI/pythia-410m",
                                                                     "revision": "step143000"}))
    path.write_text(json.dumps(data))
    result = cli(["import-evals", path, PYTHIA_EVALS / "pythia-410m" / "zero-shot" / "410m_step143000.json",
                  "--db", wh.path, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {(s["model"], s["num_fewshot"]) for s in summary} == {("pythia-410m", 0)}
    sciq = wh.query("SELECT harness_format, value FROM evals WHERE task = 'sciq' AND metric = 'acc' ORDER BY value")
    # both files score step143000 sciq 0-shot: one row, the later file (the Pythia one, 0.811) wins
    assert sciq.rows() == [("old", 0.811)]
    assert wh.query("SELECT count(*) AS n FROM evals WHERE task = 'gsm8k'")["n"].item() == 2


def test_model_names_from_model_args():
    assert eval_model_name("EleutherAI/pythia-v1.1-410m") == "pythia-410m"
    assert eval_model_name("EleutherAI/pythia-v1.1-1b-bf16") == "pythia-1b"
    assert eval_model_name("EleutherAI/pythia-v1.1-1b-deduped") == "pythia-1b-deduped"
    assert eval_model_name("olmo-7b") == "olmo-2-7b"
    assert eval_model_name("/ckpts/my-run/step1000/") == "my-run"


def test_a_file_without_a_checkpoint_asks_for_one(tmp_path):
    data = dict(CURRENT, config=dict(CURRENT["config"], model_args="pretrained=/models/final"))
    path = tmp_path / "results_2025-02-01.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="--checkpoint"):
        read_results(path)
    assert read_results(path, checkpoint="step500").step == 500


def test_import_evals_prints_every_model_whole_at_80_columns(tmp_path):
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    geowh = [sys.executable, "-c", "from geowh.cli import main; main()"]
    done = subprocess.run([*geowh, "import-evals", str(PYTHIA_EVALS), "--db", str(tmp_path / "w.duckdb")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in done.stdout
    shown = {line.split("│")[1].strip() for line in lines if line.startswith("│")}
    assert shown == set(PYTHIA_MODELS)
    assert "shots" in done.stdout and "imported" in done.stdout


@pytest.mark.parametrize("raw, what", [('"0.9"', "not a number"), ('"high"', "not a number"),
                                       ("NaN", "NaN or infinite"), ("1e999", "NaN or infinite"),
                                       ("-Infinity", "NaN or infinite")])
def test_a_string_nan_or_infinite_score_is_refused_in_one_line_and_nothing_is_written(cli, tmp_path, raw, what):
    # Skipping such a value imported the task without its score; 1e999 went in as infinity.
    path = tmp_path / "results_2025-01-15T10-00-00.json"
    text = json.dumps(CURRENT).replace('"acc,none": 0.893', f'"acc,none": {raw}', 1)
    assert text != json.dumps(CURRENT)
    path.write_text(text)
    with pytest.raises(InputError, match=f"results.sciq.acc,none is .*{what}"):
        read_results(path)
    result = cli(["import-evals", path, "--db", tmp_path / "w.duckdb"])
    assert result.exit_code == 1 and what in result.output and "Traceback" not in result.output
    assert not (tmp_path / "w.duckdb").exists()


def test_a_string_stderr_other_than_n_a_is_refused(tmp_path):
    path = tmp_path / "results_2025-01-15T10-00-00.json"
    path.write_text(json.dumps(CURRENT).replace('"acc_stderr,none": 0.00978', '"acc_stderr,none": "0.01"', 1))
    with pytest.raises(InputError, match="results.sciq.acc_stderr,none is \"0.01\", not a number"):
        read_results(path)
