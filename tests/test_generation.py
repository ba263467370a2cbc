"""The generation measurement: pass@k, distinct-n, checkers, batched decoding, seeded sampling, and its
rows read by correlate, plot and SQL like imported evals."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from tiny import save_series, tiny_model, tokenizer, write_docs

from geowh.checkers import TaskItem, first_line
from geowh.errors import InputError
from geowh.ingest import IngestConfig, Selection, ingest
from geowh.ingest.measurements.generation import (
    GenerateConfig,
    Generation,
    encode_prompt,
    generate,
    item_counts,
)
from geowh.queries.generation import distinct_n, pass_at_k, pass_at_k_table
from geowh.warehouse import Warehouse

PROMPTS = ["Return the value of", "The capital of France is", "1 + 1 =", "def f(x):\n    return",
           "Open the file and", "A list of"]
SETTINGS = ["--samples", "4", "--k", "1,2,4", "--max-new-tokens", "6"]


# -- the arithmetic -------------------------------------------------------------------------------


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of k-subsets of n samples (c correct) holding a correct one, by enumeration."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_the_enumeration_of_every_subset():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_stays_finite_where_the_binomials_overflow():
    assert pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000)
    assert pass_at_k(2000, 3, 500) == pytest.approx(1 - math.comb(1997, 500) / math.comb(2000, 500))
    with pytest.raises(InputError):
        pass_at_k(4, 1, 5)


def test_distinct_n_counts_unique_word_ngrams_over_all_samples():
    texts = ["a b a", "a b c", ""]
    # unigrams a b a a b c: 3 distinct of 6; bigrams (a b) (b a) (a b) (b c): 3 distinct of 4
    assert distinct_n(texts, 1) == 3 / 6
    assert distinct_n(texts, 2) == 3 / 4
    assert distinct_n(["one", ""], 2) is None


def test_an_item_is_graded_by_its_own_checker():
    number = TaskItem("1", "2 + 40 =", "42", checker="number")
    # `number` accepts what `exact` refuses: grading every item by exact match fails this
    assert item_counts(number, " 42 apples\nand more", ["42.0", "41", "it is 42", ""]) == (True, 2)
    exact = TaskItem("2", "Say hi:", "hi")
    assert item_counts(exact, "hi there", ["hi", " hi \nmore", "Hi"]) == (False, 2)


def test_settings_are_checked_before_anything_runs(tmp_path):
    task = tmp_path / "t.jsonl"
    task.write_text('{"prompt": "a", "answer": "b"}\n')
    for bad in ({"samples": 0}, {"k": (8,), "samples": 4}, {"temperature": 0.0}, {"max_new_tokens": 0}):
        with pytest.raises(InputError):
            GenerateConfig((str(task),), **bad)
    from geowh.ingest.measurements import generation

    with pytest.raises(InputError, match="give --generate"):
        generation.build(IngestConfig(), {"samples": 4})
    assert generation.build(IngestConfig(), {}) is None
    built = generation.build(IngestConfig(seed=7), {"generate": str(task), "samples": 2})
    assert built is not None and (built.settings.k, built.settings.seed) == ((1,), 7)  # the default ks that fit


# -- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt-neox", "gpt2"])  # gpt2's absolute positions notice a wrong padding
def test_batched_greedy_decoding_equals_one_prompt_at_a_time(arch):
    model, tok = tiny_model(arch), tokenizer()
    prompts = [encode_prompt(tok, p, model, 8) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 2  # the batch needs padding
    batched = generate(model, tok, prompts, max_new_tokens=8, batch_size=len(prompts))
    alone = [generate(model, tok, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert all(len(c.tokens) == 8 or c.tokens[-1] == tok.eos_token_id for c in batched)


def test_seeded_samples_do_not_depend_on_the_batch_they_run_in():
    model, tok = tiny_model(), tokenizer()
    prompts = [encode_prompt(tok, p, model, 6) for p in PROMPTS]
    seeds = list(range(100, 100 + len(prompts)))
    a = generate(model, tok, prompts, max_new_tokens=6, batch_size=6, temperature=1.0, seeds=seeds)
    b = generate(model, tok, prompts[::-1], max_new_tokens=6, batch_size=2, temperature=1.0, seeds=seeds[::-1])[::-1]
    assert [c.tokens for c in a] == [c.tokens for c in b]
    other = generate(model, tok, prompts, max_new_tokens=6, batch_size=6, temperature=1.0, seeds=[s + 1 for s in seeds])
    assert [c.tokens for c in other] != [c.tokens for c in a]  # the seed decides
    assert all(len(c.entropies) == len(c.tokens) for c in a)
    # a near-uniform tiny model: every step's entropy is close to log |V| and never above it
    assert all(0 < h <= math.log(50304) + 1e-6 for c in a for h in c.entropies)


def test_the_entropy_is_that_of_the_tempered_distribution():
    import torch

    from geowh.ingest.measurements.generation import SeededSampler

    scores = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]])
    sampler = SeededSampler([1, 2], temperature=1.0)
    forced = sampler(None, scores)
    p = torch.tensor([0.25, 0.75])
    assert sampler.entropies[0].tolist() == pytest.approx([float(-(p * p.log()).sum()), math.log(2)])
    assert (forced == 0).sum(-1).tolist() == [1, 1] and torch.isinf(forced).sum().item() == 2
    cold = SeededSampler([1, 2], temperature=0.01)
    cold(None, scores)
    assert cold.entropies[0][0].item() < 1e-6  # nearly greedy


# -- through the engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """./run (4 tiny GPT-NeoX checkpoints), docs.txt and tasks/arith.jsonl (junk answers: accuracy 0)."""
    root = tmp_path_factory.mktemp("generation")
    save_series(root / "run")
    write_docs(root / "docs.txt", limit=60)
    (root / "tasks").mkdir()
    lines = [json.dumps({"id": f"q{i}", "prompt": p, "answer": f"no such answer {i}"}) for i, p in enumerate(PROMPTS)]
    (root / "tasks" / "arith.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _ingest(workdir, db, *, checkpoints="all", force=False, executor=None, geometry=True, **options):
    settings = {"generate": str(workdir / "tasks" / "arith.jsonl"), "samples": 4, "k": "1,2,4", "max_new_tokens": 6}
    config = IngestConfig(probe=str(workdir / "docs.txt"), n=30, max_len=16, geometry=geometry)
    return ingest(str(workdir / "run"), config, Selection(checkpoints), db=db, options=settings | options, force=force,
                  executor=executor)


GEN_ROWS = "SELECT checkpoint, task, metric, value, stderr FROM evals WHERE source = 'geowh' ORDER BY ALL"
ITEM_ROWS = "SELECT checkpoint, item, samples, correct, greedy_correct, greedy, sampled_tokens, entropy " \
            "FROM generation_items ORDER BY ALL"


@pytest.fixture(scope="module")
def measured(workdir, tmp_path_factory):
    db = tmp_path_factory.mktemp("gen-db") / "w.duckdb"
    summary = _ingest(workdir, db)
    assert [c["status"] for c in summary.checkpoints] == ["ok"] * 4
    return db


def test_every_score_is_an_evals_row_of_source_geowh_with_its_settings(measured):
    wh = Warehouse(measured)
    rows = wh.query("SELECT * FROM evals WHERE checkpoint = 'step2' ORDER BY metric").to_dicts()
    assert [r["metric"] for r in rows] == ["accuracy", "distinct-1", "distinct-2", "entropy", "pass@1", "pass@2", "pass@4"]
    assert {(r["task"], r["source"], r["filter"], r["num_fewshot"], r["step"]) for r in rows} == {("arith", "geowh", "none", 0, 2)}
    by = {r["metric"]: r for r in rows}
    assert by["accuracy"]["value"] == 0.0 and by["accuracy"]["stderr"] == 0.0  # junk cannot say "no such answer"
    params = json.loads(by["pass@2"]["params"])
    assert {k: params[k] for k in ("k", "samples", "temperature", "max_new_tokens", "items")} == {
        "k": 2, "samples": 4, "temperature": 1.0, "max_new_tokens": 6, "items": 6}
    assert 0 < by["distinct-1"]["value"] <= 1 and 0 < by["entropy"]["value"] <= math.log(50304)
    items = wh.query("SELECT * FROM generation_items WHERE checkpoint = 'step2' ORDER BY item").to_dicts()
    assert [r["item"] for r in items] == [f"q{i}" for i in range(6)] and {r["samples"] for r in items} == {4}
    assert all(r["run_id"] for r in items) and all(0 < r["sampled_tokens"] <= 24 for r in items)


def test_a_task_whose_answers_are_the_greedy_completions_scores_accuracy_one(workdir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(workdir / "run" / "step4").eval()
    tok = tokenizer()
    prompts = [encode_prompt(tok, p, model, 6) for p in PROMPTS]
    greedy = generate(model, tok, prompts, max_new_tokens=6, batch_size=1)
    right = tmp_path / "echo.jsonl"
    right.write_text("".join(json.dumps({"id": str(i), "prompt": p, "answer": first_line(g.text)}) + "\n"
                             for i, (p, g) in enumerate(zip(PROMPTS, greedy))))
    _ingest(workdir, tmp_path / "w.duckdb", checkpoints="step4", generate=str(right))
    accuracy = Warehouse(tmp_path / "w.duckdb").query(
        "SELECT value, stderr FROM evals WHERE task = 'echo' AND metric = 'accuracy'").rows()
    assert accuracy == [(1.0, 0.0)]


@pytest.mark.slow
def test_two_runs_store_the_same_numbers_and_a_rerun_skips_what_is_done(workdir, measured, tmp_path):
    again = _ingest(workdir, tmp_path / "again.duckdb")
    assert [c["status"] for c in again.checkpoints] == ["ok"] * 4
    for sql in (GEN_ROWS, ITEM_ROWS):
        assert Warehouse(tmp_path / "again.duckdb").query(sql).rows() == Warehouse(measured).query(sql).rows()
    assert [c["status"] for c in _ingest(workdir, tmp_path / "again.duckdb").checkpoints] == ["skipped"] * 4


@pytest.mark.slow
def test_the_generation_settings_are_part_of_the_config_key(workdir, tmp_path):
    db = tmp_path / "w.duckdb"
    first = _ingest(workdir, db, checkpoints="step0", geometry=False)
    for change in ({"temperature": 0.5}, {"samples": 2, "k": "1,2"}, {"max_new_tokens": 3}):
        other = _ingest(workdir, db, checkpoints="step0", geometry=False, **change)
        assert other.config_key != first.config_key and other.checkpoints[0]["status"] == "ok", change
    assert _ingest(workdir, db, checkpoints="step0", geometry=False).checkpoints[0]["status"] == "skipped"
    assert Warehouse(db).query("SELECT DISTINCT kind FROM runs").rows() == [("generation",)]


def test_pass_at_k_recomputed_from_the_items_equals_the_stored_rows_and_takes_any_k(measured):
    wh = Warehouse(measured)
    stored = wh.query("SELECT checkpoint, metric, value, stderr FROM evals WHERE metric LIKE 'pass@%' ORDER BY ALL").rows()
    again = pass_at_k_table(wh, [1, 2, 4], model="run", task="arith")
    recomputed = sorted((r["checkpoint"], f"pass@{r['k']}", r["value"], r["stderr"]) for r in again.to_dicts())
    assert len(stored) == 12 and [r[:2] for r in recomputed] == [r[:2] for r in stored]
    assert all(a[2:] == pytest.approx(b[2:]) for a, b in zip(recomputed, stored))
    three = pass_at_k_table(wh, 3, model="run")
    assert three.height == 4 and set(three["k"].to_list()) == {3}
    with pytest.raises(InputError, match="between 1 and the samples"):
        pass_at_k_table(wh, 5)


def test_correlate_plot_and_sql_read_the_scores_unchanged(measured, cli, tmp_path):
    from geowh.queries.correlate import correlate

    frame = correlate(Warehouse(measured), "run", "rankme", "eval:arith/pass@1")
    assert frame["n"].to_list() == [4]
    result = cli(["correlate", "--db", measured, "--model", "run", "--x", "rankme", "--y", "eval:arith/distinct-2",
                  "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["n"] == 4
    out = tmp_path / "fig.png"
    result = cli(["plot", "--db", measured, "--model", "run", "--eval", "arith/pass@1,arith/entropy", "--out", out])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000
    result = cli(["sql", "--db", measured, "--format", "csv",
                  "select count(*) as n from evals where task = 'arith' and metric = 'pass@4'"])
    assert result.output.split() == ["n", "4"]


def test_the_cli_takes_the_generation_options_and_refuses_bad_ones(workdir, cli, tmp_path):
    db = tmp_path / "w.duckdb"
    task = workdir / "tasks" / "arith.jsonl"
    base = ["ingest", workdir / "run", "--probe", workdir / "docs.txt", "--n", "30", "--max-len", "16",
            "--checkpoints", "step0", "--db", db, "--quiet"]
    result = cli([*base, "--generate", task, *SETTINGS, "--temperature", "0.7"])
    assert result.exit_code == 0, result.output
    params = Warehouse(db).query("SELECT params FROM evals WHERE metric = 'pass@4'").item()
    assert json.loads(params)["temperature"] == 0.7
    for bad, says in ((["--samples", "4"], "give --generate"), (["--generate", task, "--k", "1,8", "--samples", "4"], "--k"),
                      (["--generate", workdir / "docs.txt"], ".jsonl")):
        result = cli([*base, *bad])
        assert result.exit_code == 1 and says in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.slow
def test_generation_through_ray_stores_what_a_serial_run_stores(workdir, measured, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'geowh[ray]'")
    import logging

    from geowh.ingest.engine.cluster import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        with RayExecutor(workers=2) as executor:
            summary = _ingest(workdir, tmp_path / "ray.duckdb", executor=executor)
    finally:
        ray.shutdown()
    assert [c["status"] for c in summary.checkpoints] == ["ok"] * 4
    ray_wh, serial = Warehouse(tmp_path / "ray.duckdb"), Warehouse(measured)
    assert ray_wh.query(ITEM_ROWS).select("checkpoint", "item", "correct", "greedy", "sampled_tokens").rows() == \
        serial.query(ITEM_ROWS).select("checkpoint", "item", "correct", "greedy", "sampled_tokens").rows()
    for a, b in zip(ray_wh.query(GEN_ROWS).rows(), serial.query(GEN_ROWS).rows()):
        assert a[:3] == b[:3] and a[3] == pytest.approx(b[3], rel=1e-6)


def test_a_generation_can_be_built_from_python_and_run_beside_the_geometry(workdir, tmp_path):
    gen = Generation(GenerateConfig((str(workdir / "tasks" / "arith.jsonl"),), samples=2, k=(1, 2), max_new_tokens=4))
    summary = ingest(str(workdir / "run"), IngestConfig(probe=str(workdir / "docs.txt"), n=30, max_len=16),
                     Selection("step1"), db=tmp_path / "w.duckdb", measurements=[gen])
    assert summary.checkpoints[0]["status"] == "ok"
    kinds = Warehouse(tmp_path / "w.duckdb").query("SELECT kind FROM runs").rows()
    assert kinds == [("generation+geometry",)]  # registry order, as `geowh ingest --generate` writes it
    assert Warehouse(tmp_path / "w.duckdb").query("SELECT count(*) FROM evals WHERE metric = 'pass@2'").item() == 1
