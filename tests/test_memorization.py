"""Distributional memorization: QA tasks, the zero rule, Spearman, batched scoring, end to end."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import scipy
from conftest import PYTHIA_TOKENIZER
from test_infgram import BruteForce

from geowh.errors import InputError
from geowh.ingest.measurements.memorization import answer_logliks, infgram_side
from geowh.ingest.measurements.statistics import METRIC, ZERO_RULE, log_p_inf, spearman, suffix_length_table
from geowh.ingest.measurements.tasks import QAItem, load_task

WORDS = ["red", "blue", "green", "river", "mountain", "city", "king", "queen", "ocean", "forest", "star", "moon"]


def qa_items(n: int = 24) -> list[dict]:
    """Questions with answers from WORDS; items 0, 5, 10, … answer with words the corpus lacks."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        answer = " ".join(rng.choice(WORDS) for _ in range(1 + i % 3))
        if i % 10 == 0:
            answer = "zephyr xylophone"  # every answer token has P∞ = 0: excluded
        elif i % 10 == 5:
            answer = "red zephyr"  # one zero token, dropped from the sum
        rows.append({"id": f"q{i}", "question": f"Which {WORDS[i % 12]} is number {i}" + ("?" if i % 2 else ""),
                     "answer": answer})
    return rows


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in qa_items()))
    return path


@pytest.fixture(scope="module")
def qa_index(tmp_path_factory, qa_file):
    """A corpus where item i's question and answer appear together i % 5 times, among noise."""
    from geowh.index.build import build_index
    from geowh.index.index import Index

    rng = random.Random(1)
    docs = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(200)]
    for row in qa_items():
        item = QAItem(row["id"], row["question"], row["answer"])
        docs += [item.prompt + item.target] * (int(row["id"][1:]) % 5)
    rng.shuffle(docs)
    root = tmp_path_factory.mktemp("qa-index")
    (root / "corpus.txt").write_text("\n".join(docs) + "\n")
    build_index([root / "corpus.txt"], str(PYTHIA_TOKENIZER), root / "index")
    return Index(root / "index")


def test_items_are_formatted_with_one_question_mark():
    assert QAItem("1", "Who wrote Hamlet", "Shakespeare").prompt == "Question: Who wrote Hamlet? Answer:"
    assert QAItem("1", "Who wrote Hamlet? ", "Shakespeare").prompt == "Question: Who wrote Hamlet? Answer:"
    assert QAItem("1", "q", " Paris ").target == " Paris"


def test_a_local_jsonl_task_is_keyed_by_its_content(qa_file, tmp_path):
    key, items = load_task(str(qa_file))
    assert key.startswith("qa-") and len(key) == len("qa-") + 12
    assert [i.item for i in items][:2] == ["q0", "q1"] and len(items) == 24
    other = tmp_path / "qa.jsonl"
    other.write_text(qa_file.read_text().replace("red", "pink"))
    assert load_task(str(other))[0] != key
    assert len(load_task(str(qa_file), limit=5)[1]) == 5
    with pytest.raises(InputError, match="unknown QA task"):
        load_task("no-such-task")
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1"):
        load_task(str(tmp_path / "bad.jsonl"))


def test_triviaqa_reads_the_rc_validation_split_and_its_answer_value(monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the dataset is faked: no hub check

    seen = {}
    rows = [{"question_id": "tc_1", "question": "Who?", "answer": {"value": "Him", "aliases": ["He"]}},
            {"question_id": "tc_1", "question": "Who?", "answer": {"value": "Him", "aliases": []}},
            {"question_id": "tc_2", "question": "Where", "answer": {"value": "There", "aliases": []}}]

    def fake_load(name, config, split):
        seen.update(name=name, config=config, split=split)
        return datasets.Dataset.from_list([r | {"entity_pages": {}} for r in rows])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    key, items = load_task("triviaqa")
    assert key == "triviaqa" and seen == {"name": "mandarjoshi/trivia_qa", "config": "rc", "split": "validation"}
    assert items == [QAItem("tc_1", "Who?", "Him"), QAItem("tc_2", "Where", "There")]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(InputError, match="local .jsonl"):
        load_task("triviaqa")


def test_zero_probability_tokens_are_dropped_and_all_zero_items_excluded():
    assert log_p_inf([0.5, 0.0, 0.25]) == (math.log(0.5) + math.log(0.25), 1, None)
    value, zeros, excluded = log_p_inf([0.0, 0.0])
    assert value is None and zeros == 2 and "P∞ = 0" in excluded
    assert log_p_inf([])[2] is not None
    assert log_p_inf([1.0]) == (0.0, 0, None)


def test_spearman_on_constructed_data():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert spearman(x, [math.exp(v) for v in x])["rho"] == pytest.approx(1.0)
    assert spearman(x, [-v**3 for v in x])["rho"] == pytest.approx(-1.0)
    y = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]  # ranks differ by one swap per pair: 1 - 6·6/(6·35) = 0.8286
    result = spearman(x, y)
    assert result["rho"] == pytest.approx(1 - 6 * 6 / (6 * 35)) and result["n"] == 6
    assert 0 < result["p"] < 0.05
    with_gaps = spearman(x + [None, math.nan], y + [1.0, 2.0])
    assert with_gaps["n"] == 6 and with_gaps["rho"] == result["rho"]
    assert math.isnan(spearman([1.0, 2.0], [1.0, 2.0])["rho"])
    assert "constant" in spearman(x, [1.0] * 6)["reason"]


def test_the_infgram_side_matches_brute_force_and_is_cached(qa_index, qa_file, wh, monkeypatch):
    from geowh.index.index import Index

    key, items = load_task(str(qa_file))
    rows, fresh = infgram_side(qa_index, key, items, wh)
    assert fresh == rows and not wh.path.exists()  # computed here, stored by the caller
    wh.write({"infgram_items": fresh})
    lines = [x for x in (qa_index.directory.parent / "corpus.txt").read_text().split("\n") if x]
    brute = BruteForce([qa_index.tokenize(x) for x in lines], 0xFFFF)
    for item, row in zip(items, rows):
        prompt, answer = qa_index.tokenize(item.prompt), qa_index.tokenize(item.target)
        want = [brute.prob(prompt + answer[:i], t) for i, t in enumerate(answer)]
        assert list(zip(row["probs"], row["suffix_lens"])) == want
        assert row["excluded"] is None or all(p == 0 for p in row["probs"])
    assert any(r["excluded"] for r in rows) and any(r["zero_tokens"] for r in rows if not r["excluded"])
    stored = wh.query("SELECT count(*) AS n FROM infgram_items WHERE task = ?", [key])["n"][0]
    assert stored == len(items)

    def no_engine(*args, **kwargs):
        raise AssertionError("the cached rows should have been used")

    monkeypatch.setattr(Index, "continuation_probs", no_engine)
    again, fresh = infgram_side(qa_index, key, items, wh)
    assert [r["log_p_inf"] for r in again] == [r["log_p_inf"] for r in rows] and fresh == []


def test_suffix_length_table_uses_the_papers_buckets():
    table = suffix_length_table([{"suffix_lens": [0, 3, 4, 8, 9, 20]}, {"suffix_lens": [5, 5]}])
    assert [r["suffix_len"] for r in table] == ["<=3", "4", "5", "6", "7", "8", ">8"]
    assert [r["tokens"] for r in table] == [2, 1, 2, 0, 0, 1, 2]
    assert sum(r["share"] for r in table) == pytest.approx(1.0)


def test_answer_logliks_take_one_forward_per_batch_and_match_a_plain_forward():
    import torch
    from tiny import tiny_model, tokenizer

    model, tok = tiny_model(), tokenizer()
    tok.pad_token = tok.eos_token
    items = [QAItem(r["id"], r["question"], r["answer"]) for r in qa_items(10)]
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    batched = answer_logliks(model, tok, items, batch_size=4)
    assert len(calls) == 3  # ceil(10 / 4), whatever the number of answer tokens
    one_by_one = answer_logliks(model, tok, items, batch_size=1)
    assert [n for _, n in batched] == [n for _, n in one_by_one]
    np.testing.assert_allclose([v for v, _ in batched], [v for v, _ in one_by_one], rtol=1e-5)
    item = items[7]
    prompt, answer = tok(item.prompt)["input_ids"], tok(item.target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0].double(), -1)
    plain = sum(logprobs[len(prompt) - 1 + j, t].item() for j, t in enumerate(answer))
    assert batched[7][0] == pytest.approx(plain, rel=1e-5)


def test_memorize_scores_a_local_series_resumes_and_records_failures(cli, tmp_path, qa_file, qa_index):
    from tiny import corrupt, save_series

    from geowh.warehouse import Warehouse

    run, db = save_series(tmp_path / "run", steps=(0, 1, 2)), tmp_path / "w.duckdb"
    args = ["memorize", run, "--task", qa_file, "--index", qa_index.directory, "--db", db, "--json", "--batch-size", "8"]
    first = cli(args)
    assert first.exit_code == 0, first.output
    assert [s["status"] for s in json.loads(first.stdout)] == ["ok", "ok", "ok"]
    wh = Warehouse(db)
    assert wh.trajectories(model="run").height == 0  # no geometry: memorization has its own view
    scores = wh.query(f"SELECT task, index, step FROM memorization WHERE metric = '{METRIC}' ORDER BY step")
    assert scores["step"].to_list() == [0, 1, 2] and scores["task"].unique().to_list() == [load_task(str(qa_file))[0]]
    assert scores["index"].unique().to_list() == [str(qa_index.directory.resolve())]
    runs = wh.query("SELECT DISTINCT kind, probe, numpy_version, scipy_version, hub_commit FROM runs")
    assert runs.rows() == [("memorization", load_task(str(qa_file))[0], np.__version__, scipy.__version__, None)]
    metric = wh.query(f"SELECT value, params FROM metrics WHERE metric = '{METRIC}' AND checkpoint = 'step1'")
    params = json.loads(metric["params"][0])
    rows, _ = infgram_side(qa_index, params["task"], load_task(str(qa_file))[1])
    included = sum(1 for r in rows if not r["excluded"])
    assert params["n"] == included and params["zero_rule"] == ZERO_RULE
    assert params["index_tokenizer"] == str(PYTHIA_TOKENIZER) and params["model_tokenizer"]
    assert -1 <= metric["value"][0] <= 1
    assert wh.query("SELECT count(*) AS n FROM memorization_items")["n"][0] == 3 * 24

    again = cli(args)
    assert [s["status"] for s in json.loads(again.stdout)] == ["skipped"] * 3

    corrupt(run / "step2")
    forced = cli([*args, "--force"])
    assert forced.exit_code == 1
    assert [s["status"] for s in json.loads(forced.stdout)] == ["ok", "ok", "failed"]
    failed = wh.query("SELECT checkpoint, error FROM runs WHERE status = 'failed'")
    assert failed["checkpoint"].to_list() == ["step2"] and "step2" in failed["error"][0]


def test_the_stored_rho_is_spearman_over_independently_scored_items(cli, tmp_path, qa_file, qa_index):
    import torch
    from scipy.stats import spearmanr
    from tiny import save_series
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from geowh.warehouse import Warehouse

    run, db = save_series(tmp_path / "run", steps=(0, 3)), tmp_path / "w.duckdb"
    done = cli(["memorize", run, "--task", qa_file, "--index", qa_index.directory, "--checkpoints", "step3",
                "--db", db, "--batch-size", 8, "--json"])
    assert done.exit_code == 0, done.output
    stored = Warehouse(db).query(f"SELECT value FROM metrics WHERE metric = '{METRIC}'")["value"].to_list()

    # Each side scored here without geowh: a plain forward per item, and the infini-gram engine.
    model = AutoModelForCausalLM.from_pretrained(run / "step3").eval()
    tok = AutoTokenizer.from_pretrained(run / "step3")
    index_tok = AutoTokenizer.from_pretrained(PYTHIA_TOKENIZER)
    ours, theirs = [], []
    for row in qa_items():
        q = row["question"]
        prompt, target = f"Question: {q}{'' if q.endswith('?') else '?'} Answer:", " " + row["answer"]
        p_ids = index_tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = index_tok(target, add_special_tokens=False)["input_ids"]
        probs = [qa_index.engine.infgram_prob(prompt_ids=p_ids + a_ids[:j], cont_id=t)["prob"]
                 for j, t in enumerate(a_ids)]
        if not any(p > 0 for p in probs):
            continue  # the zero rule: every answer token unseen, the item is left out
        p_ids, a_ids = tok(prompt)["input_ids"], tok(target, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([p_ids + a_ids])).logits[0].double(), -1)
        ours.append(sum(logprobs[len(p_ids) - 1 + j, t].item() for j, t in enumerate(a_ids)))
        theirs.append(sum(math.log(p) for p in probs if p > 0))
    rho = spearmanr(theirs, ours).statistic
    assert len(ours) == 21 and stored == [pytest.approx(rho, abs=1e-9)]
    assert abs(spearmanr(theirs, ours[::-1]).statistic - rho) > 0.05  # the pairing is what the value measures


def test_index_stats_reports_table_7_for_a_task(cli, tmp_path, qa_file, qa_index):
    result = cli(["index", "stats", qa_index.directory, "--task", qa_file, "--db", tmp_path / "w.duckdb", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    rows, _ = infgram_side(qa_index, stats["task"], load_task(str(qa_file))[1])
    assert sum(b["tokens"] for b in stats["buckets"]) == sum(len(r["suffix_lens"]) for r in rows)
    assert stats["items"] == 24 and stats["excluded"] == sum(1 for r in rows if r["excluded"])


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_index_stats_refuses_a_limit_below_one_instead_of_dropping_the_last_item(cli, tmp_path, qa_file, qa_index, limit):
    # issue 18: --limit -1 silently used 29 of 30 items
    result = cli(["index", "stats", qa_index.directory, "--task", qa_file, "--db", tmp_path / "w.duckdb", "--limit", limit])
    assert result.exit_code == 1 and f"--limit {limit}: give a whole number of items" in result.output
    assert "Traceback" not in result.output
    assert len(load_task(str(qa_file), 23)[1]) == 23


def test_index_stats_runs_in_a_fresh_process_with_a_table_that_fits_80_columns(tmp_path, qa_file, qa_index):
    import os
    import subprocess
    import sys

    # Fresh: the ∞-gram side is scored on threads before anything imported transformers.
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-c", "from geowh.cli import main; main()", "index", "stats",
                           str(qa_index.directory), "--task", str(qa_file), "--db", str(tmp_path / "w.duckdb")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "24 items, 3 excluded" in " ".join(done.stdout.split()) and "│ >8 " in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


def test_ingest_with_memorization_writes_geometry_to_trajectories_and_scores_to_memorization(cli, tmp_path, qa_file, qa_index):
    from tiny import save_series

    from geowh.warehouse import Warehouse

    run, db = save_series(tmp_path / "run", steps=(0, 4)), tmp_path / "w.duckdb"
    probe = tmp_path / "probe.txt"
    probe.write_text("\n".join(f"{w} flows past the {v} under the {u} sky" for w in WORDS for v in WORDS[:3] for u in WORDS[:2]))
    result = cli(["ingest", run, "--probe", probe, "--n", 40, "--min-len", 2, "--max-len", 32, "--db", db,
                  "--memorization", qa_file, "--index", qa_index.directory, "--json"])
    assert result.exit_code == 0, result.output
    traj = Warehouse(db).query("SELECT step, rankme, alpha_req FROM trajectories WHERE model = 'run' ORDER BY step")
    assert traj["step"].to_list() == [0, 4] and traj["rankme"].is_not_null().all()  # one row per checkpoint
    memorization = Warehouse(db).query(f"SELECT checkpoint FROM memorization WHERE metric = '{METRIC}' ORDER BY step")
    assert memorization["checkpoint"].to_list() == ["step0", "step4"]
    items = Warehouse(db).query("SELECT count(*) AS n, count(run_id) AS with_run FROM memorization_items")
    assert items["n"][0] == items["with_run"][0] == 2 * 24
    lonely = cli(["ingest", run, "--probe", probe, "--db", db, "--memorization", qa_file])
    assert lonely.exit_code == 1 and "--index" in lonely.output


def test_scores_of_one_task_against_two_indexes_both_stay(cli, tmp_path, qa_file, qa_index):
    import shutil

    from tiny import save_series

    from geowh.warehouse import Warehouse

    run, db = save_series(tmp_path / "run", steps=(0,)), tmp_path / "w.duckdb"
    other = tmp_path / "copy-of-index"
    shutil.copytree(qa_index.directory, other)
    for index in (qa_index.directory, other):
        done = cli(["memorize", run, "--task", qa_file, "--index", index, "--db", db, "--json", "--batch-size", 8])
        assert done.exit_code == 0, done.output
    wh = Warehouse(db)
    assert wh.query(f"SELECT count(*) AS n FROM metrics WHERE metric = '{METRIC}'")["n"][0] == 2
    indexes = wh.query(f"SELECT index FROM memorization WHERE metric = '{METRIC}' ORDER BY index")["index"]
    assert indexes.to_list() == sorted([str(qa_index.directory.resolve()), str(other.resolve())])


def test_memorize_through_the_engine_records_an_interrupt_and_resumes(tmp_path, qa_file, qa_index, monkeypatch):
    from tiny import save_series

    from geowh.ingest.config import MemorizeConfig, Selection
    from geowh.ingest.measurements import memorization as mem_mod
    from geowh.ingest.measurements.memorization import memorize
    from geowh.signals import Interrupted
    from geowh.warehouse import Warehouse

    run, wh = save_series(tmp_path / "run", steps=(0, 1, 2)), Warehouse(tmp_path / "w.duckdb")
    config = MemorizeConfig(str(qa_file), str(qa_index.directory), batch_size=8)
    score = mem_mod.answer_logliks

    def stop_at_step1(model, tokenizer, items, batch_size=32):
        if model.name_or_path.endswith("step1"):
            raise Interrupted()
        return score(model, tokenizer, items, batch_size)

    monkeypatch.setattr(mem_mod, "answer_logliks", stop_at_step1)
    with pytest.raises(Interrupted) as stopped:
        memorize(str(run), config, wh=wh)
    assert "step1 recorded as interrupted" in stopped.value.detail
    runs = wh.query("SELECT checkpoint, status FROM runs ORDER BY checkpoint").rows()
    assert runs == [("step0", "ok"), ("step1", "interrupted")]  # step2 never started

    monkeypatch.setattr(mem_mod, "answer_logliks", score)
    again = memorize(str(run), config, Selection(), wh=wh)
    assert [c["status"] for c in again] == ["skipped", "ok", "ok"]
    assert all(-1 <= c["value"] <= 1 for c in again[1:]) and again[1]["n"] > 0
    assert wh.query(f"SELECT count(*) AS n FROM memorization WHERE metric = '{METRIC}'")["n"][0] == 3


def test_a_bug_while_memorizing_keeps_its_traceback(tmp_path, qa_file, qa_index, monkeypatch):
    from tiny import save_series

    from geowh.ingest.config import MemorizeConfig
    from geowh.ingest.measurements import memorization as mem_mod
    from geowh.ingest.measurements.memorization import memorize
    from geowh.warehouse import Warehouse

    run, wh = save_series(tmp_path / "run", steps=(0,)), Warehouse(tmp_path / "w.duckdb")

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(mem_mod, "answer_logliks", broken)
    with pytest.raises(ValueError, match="a bug"):
        memorize(str(run), MemorizeConfig(str(qa_file), str(qa_index.directory)), wh=wh)
    assert wh.query("SELECT status, error FROM runs").rows() == [("failed", "ValueError: a bug")]


def test_memorize_config_refuses_a_bad_setting_before_anything_loads(tmp_path):
    from geowh.ingest.config import MemorizeConfig

    for bad in ({"batch_size": 0}, {"limit": -1}, {"dtype": "float8"}):
        with pytest.raises(InputError):
            MemorizeConfig("task.jsonl", "index", **bad)


def test_building_memorization_writes_nothing_the_runs_driver_stores_its_infgram_side(tmp_path, qa_file, qa_index):
    from tiny import save_series

    from geowh.ingest.config import MemorizeConfig
    from geowh.ingest.measurements.memorization import Memorization, memorize
    from geowh.warehouse import Warehouse

    wh = Warehouse(tmp_path / "w.duckdb")
    Memorization(str(qa_file), qa_index.directory)
    assert not wh.path.exists()
    run = save_series(tmp_path / "run", steps=(0,))
    memorize(str(run), MemorizeConfig(str(qa_file), str(qa_index.directory), batch_size=8), wh=wh)
    stored = wh.query("SELECT count(*) AS n FROM infgram_items")["n"][0]
    assert stored == 24 and wh.query("SELECT count(*) AS n FROM indexes")["n"][0] == 1

