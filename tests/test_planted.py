"""The positive control of the memorization score: facts planted with known frequencies (issue 22).

The score must see memorization where there is some: an oracle whose log-likelihoods are the
∞-gram's gives ρ = 1 through the same scoring code as a checkpoint; models that never saw the
facts give ρ ≈ 0; a mini model trained on the corpus learns the frequent facts first and its ρ
rises above 0.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from geowh.ingest.measurements.memorization import Memorization, infgram_side
from geowh.ingest.measurements.statistics import METRIC, METRIC_PARTIAL, METRIC_PER_TOKEN, spearman
from geowh.ingest.measurements.tasks import local_task
from geowh.repro import facts as planted
from geowh.repro.demo import TASK_FILE, ensure_index
from geowh.repro.memorization_demo import (
    BASE_TOKENIZER,
    MemorizationDemoConfig,
    fact_scores,
    phase_of,
    prepare,
    score_checkpoints,
)
from geowh.repro.train import TrainConfig

SHARED_DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "docs"


def ordinary_text(path: Path, copies: int = 1) -> Path:
    """Ordinary documents (paragraphs of the team's docs, one per line) as a .txt corpus."""
    paragraphs = []
    for doc in sorted(SHARED_DOCS.glob("*.md")):
        for para in re.split(r"\n\s*\n", doc.read_text(encoding="utf-8")):
            text = " ".join(para.split())
            if len(text) >= 80:
                paragraphs.append(text)
    path.write_text("".join(p + "\n" for _ in range(copies) for p in paragraphs), encoding="utf-8")
    return path


def run_folder(out: Path, facts: int, max_frequency: int, train: TrainConfig):
    """A run folder with the planted corpus, its tokenizer, task and ∞-gram index (no training)."""
    config = MemorizationDemoConfig(facts=facts, max_frequency=max_frequency, corpus_mb=50,
                                    corpus=(str(ordinary_text(out.parent / f"{out.name}-ordinary.txt")),), train=train)
    train, summary = prepare(out, config)
    if not (out / "tokenizer").is_dir():  # what train-mini saves there: the given tokenizer
        shutil.copytree(out / BASE_TOKENIZER, out / "tokenizer")
    index = ensure_index(out, train)
    return train, summary, index


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted") / "run"
    train = TrainConfig(layers=1, d_model=32, vocab=600, batch_size=16, seq_len=64, probe_docs=40, checkpoints=2)
    train, summary, index = run_folder(out, 60, 300, train)
    return SimpleNamespace(out=out, train=train, summary=summary, index=index,
                           task=local_task(out / TASK_FILE), rows=planted.read_task(out / TASK_FILE))


# -- the construction ------------------------------------------------------------------------------


def test_zipf_frequencies_span_the_orders_of_magnitude():
    freqs = planted.zipf_frequencies(96, 1000)
    assert freqs[0] == 1000 and freqs[-1] == 1
    assert freqs == sorted(freqs, reverse=True)
    assert {planted.band(f) for f in freqs} == set(planted.band_names())  # every decade band has facts


def test_facts_are_seeded_and_their_mentions_counted():
    a, b = planted.plant(30, 100, seed=1), planted.plant(30, 100, seed=1)
    assert a == b and a != planted.plant(30, 100, seed=2)
    assert len({f.entity for f in a}) == len({f.answer for f in a}) == 30
    fact = max(a, key=lambda f: f.planted)
    mentions = fact.mentions()
    assert len(mentions) == fact.planted and mentions[0].startswith("Question: ")
    assert len(set(mentions)) == len(planted.RELATIONS[fact.relation][1])  # every surface form used
    mixed = planted.mix([f"ordinary document {i}" for i in range(50)], a, seed=0)
    assert len(mixed) == 50 + sum(f.planted for f in a)
    assert planted.trained_frequencies(a, mixed) == {f.id: f.planted for f in a}


def test_the_task_wording_never_occurs_in_the_corpus():
    # what the construction rests on: the ∞-gram's suffix before the answer is the generic
    # "? Answer:", never one that reaches the country (else P∞ = 1 whatever the frequency)
    for fact in planted.plant(60, 300):
        tail = f"{fact.entity}? Answer:"
        assert not any(tail in m for m in fact.mentions())
        assert any("? Answer:" in m for m in fact.mentions())


def test_infgram_likelihood_rises_with_the_planted_frequency(planted_run):
    """The ∞-gram side sees the frequencies: the dose the score is meant to detect."""
    key, items = planted_run.task
    from geowh.index.index import Index

    rows, _ = infgram_side(Index(planted_run.index["directory"], workers=1), key, items)
    assert not any(r["excluded"] for r in rows)
    trained = {r["id"]: r["trained"] for r in planted_run.rows}
    corr = spearman([r["log_p_inf"] for r in rows], [trained[r["item"]] for r in rows])
    assert corr["rho"] > 0.8 and corr["p"] < 1e-10


# -- the three controls ----------------------------------------------------------------------------


class OracleLM:
    """A causal LM whose log-likelihood of each answer is the ∞-gram's log P∞ (under the zero rule), built
    from the `infgram_items` rows. The whole log P∞ sits on the first answer token (the others get
    probability 1): per-token products would round differently in float32 and break the ∞-gram's
    exact ties (facts with the same count), which is not what this oracle is for."""

    def __init__(self, rows, items, tokenizer, vocab: int):
        import torch

        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.vocab = vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))  # `next(model.parameters())` finds the device
        self.known = {}
        for row, item in zip(rows, items):
            prompt = tokenizer(item.prompt, add_special_tokens=True)["input_ids"]
            answer = tokenizer(item.target, add_special_tokens=False)["input_ids"]
            probs = [math.exp(row["log_p_inf"])] + [1.0] * (len(answer) - 1)
            self.known[tuple(prompt + answer)] = (len(prompt), answer, probs)

    def parameters(self):
        return iter([self.weight])

    def forward(self, input_ids, attention_mask):
        import torch

        logits = torch.full((*input_ids.shape, self.vocab), -1e4)
        for b in range(input_ids.shape[0]):
            length = int(attention_mask[b].sum())
            start, answer, probs = self.known[tuple(input_ids[b, :length].tolist())]
            for j, (token, p) in enumerate(zip(answer, probs)):
                position = start - 1 + j  # the logit at position t predicts token t + 1
                logits[b, position, token] = math.log(p)
                if p < 1:  # the rest of the mass on another token, so log_softmax gives log p exactly
                    logits[b, position, (token + 1) % self.vocab] = math.log1p(-p)
        return SimpleNamespace(logits=logits)

    __call__ = forward


def _score(mem: Memorization, model, tokenizer) -> dict[str, dict]:
    """The metric rows of one "checkpoint", as `geowh memorize` computes them."""
    loaded = SimpleNamespace(model=model, tokenizer=tokenizer, ref=SimpleNamespace(model="control", label="step0"))
    return {row["metric"]: row for row in mem.score(loaded, "run")["metrics"]}


def test_an_oracle_with_the_infgram_likelihoods_scores_one(planted_run):
    from transformers import AutoTokenizer

    mem = Memorization(str(planted_run.out / TASK_FILE), planted_run.index["directory"])
    mem.start(None, None)
    tokenizer = AutoTokenizer.from_pretrained(planted_run.out / "tokenizer")
    rows = [mem.infgram[i.item] for i in mem.items]
    oracle = OracleLM(rows, mem.items, tokenizer, len(tokenizer))
    scores = _score(mem, oracle, tokenizer)
    assert scores[METRIC]["params"]["n"] == len(mem.items) == 60
    assert scores[METRIC]["value"] == pytest.approx(1.0)
    assert scores[METRIC_PARTIAL]["value"] == pytest.approx(1.0)
    if not any(r["zero_tokens"] for r in rows):  # per token, the oracle's mean counts the dropped tokens
        assert scores[METRIC_PER_TOKEN]["value"] == pytest.approx(1.0)


def test_models_that_never_saw_the_facts_score_near_zero(planted_run):
    """Untrained models of the run's architecture: their likelihoods know nothing of the frequencies."""
    from transformers import AutoTokenizer

    from geowh.repro.train import build_model

    mem = Memorization(str(planted_run.out / TASK_FILE), planted_run.index["directory"])
    tokenizer = AutoTokenizer.from_pretrained(planted_run.out / "tokenizer")
    values = []
    for seed in range(4):
        model = build_model(TrainConfig(layers=1, d_model=32, seed=seed), tokenizer).eval()
        scores = _score(mem, model, tokenizer)
        values.append(scores[METRIC]["value"])
        # 60 items: |ρ| of an independent pair exceeds 0.4 with probability 0.0015
        assert abs(scores[METRIC]["value"]) < 0.4 and abs(scores[METRIC_PARTIAL]["value"]) < 0.4
    assert abs(sum(values) / len(values)) < 0.2


@pytest.mark.slow
def test_a_mini_model_learns_the_frequent_facts_first_and_its_rho_rises(tmp_path):
    """train-mini on the planted corpus: ρ rises above 0, and accuracy rises with a fact's frequency.
    (Measured once at 181 steps: ρ −0.25 → +0.80; greedy accuracy 1/2 facts of ≥ 100 occurrences,
    4/8 of 10–99, 0/21 of 2–9, 0/9 of 1.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from geowh.repro.train import train_mini

    out = tmp_path / "run"
    train = TrainConfig(layers=2, d_model=64, vocab=600, batch_size=16, seq_len=64, lr=3e-3, probe_docs=40,
                        checkpoints=1)
    train, _, index = run_folder(out, 40, 400, train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from more, and a shared CPU loses much
    try:
        trained = train_mini(out, train, steps=200, device="cpu")
    finally:
        torch.set_num_threads(threads)
    mem = Memorization(str(out / TASK_FILE), index["directory"])
    rows = planted.read_task(out / TASK_FILE)
    rho, accuracy = {}, {}
    for step in (0, trained.steps):
        model = AutoModelForCausalLM.from_pretrained(out / f"step{step}").eval()
        tokenizer = AutoTokenizer.from_pretrained(out / f"step{step}")
        rho[step] = _score(mem, model, tokenizer)[METRIC]
        accuracy[step] = [ok for _, ok in fact_scores(model, tokenizer, rows)]
    first, last = rho[0], rho[trained.steps]
    assert abs(first["value"]) < 0.4  # step 0 never saw the facts
    assert last["value"] > 0.4 and last["params"]["p_value"] < 0.01
    assert last["value"] > first["value"] + 0.3
    assert not any(accuracy[0])
    # dose-response: the facts learnt are the frequent ones
    freq = [r["trained"] for r in rows]
    learnt = accuracy[trained.steps]
    assert 0 < sum(learnt) < len(learnt)
    assert spearman(freq, [float(x) for x in learnt])["rho"] > 0.3
    top = sorted(range(len(rows)), key=lambda i: -freq[i])[:8]
    bottom = sorted(range(len(rows)), key=lambda i: freq[i])[:8]
    assert sum(learnt[i] for i in top) > sum(learnt[i] for i in bottom)
    # what the demo imports as metrics: the same accuracy, by band, at every checkpoint
    frame = score_checkpoints(out, "run", "cpu", threads=1)
    assert frame["step"].to_list() == sorted(int(c.removeprefix("step")) for c in trained.checkpoints)
    assert frame["planted_accuracy"][-1] == pytest.approx(sum(learnt) / len(learnt))
    assert frame["planted_accuracy_100plus"][-1] >= frame["planted_accuracy_1"][-1]
    assert torch.get_num_threads() == threads


def test_phase_membership_of_a_checkpoint():
    found = [{"phase": "warmup", "start_step": 0, "end_step": 16}, {"phase": "entropy-seeking", "start_step": 16,
             "end_step": 500}, {"phase": "compression-seeking", "start_step": 500, "end_step": 1000}]
    assert [phase_of(s, found) for s in (0, 16, 17, 500, 501, 1000, 1001)] == [
        "warmup", "warmup", "entropy-seeking", "entropy-seeking", "compression-seeking", "compression-seeking", None]


@pytest.mark.parametrize("args, named", [(["--long", "--steps", "50"], "--steps"), (["--minutes", "3"], "--minutes"),
                                         (["--qa-items", "10"], "--qa-items"), (["--shipped", "--steps", "5"], "--steps")])
def test_demo_memorization_refuses_the_options_it_would_ignore(cli, tmp_path, args, named):
    result = cli(["demo", "--memorization", *args, "--db", tmp_path / "w.duckdb"])
    assert result.exit_code == 1 and named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "w.duckdb").exists()


# What docs/results.md §4 reports for `geowh demo --memorization` (the shipped trajectory).
SHIPPED_PHASES = [("warmup", 0, 16), ("entropy-seeking", 16, 600)]


def test_the_shipped_memorization_run_loads_and_says_what_the_docs_report(cli, tmp_path):
    import json

    from geowh.repro.memorization_demo import SHIPPED_MODEL

    result = cli(["demo", "--memorization", "--shipped", "--db", tmp_path / "w.duckdb", "--json"])
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout)
    claim = loaded["claim"]
    assert loaded["model"] == SHIPPED_MODEL and loaded["imported"]["checkpoints"] == 27
    assert [(p["phase"], p["start_step"], p["end_step"]) for p in claim["phases"]] == SHIPPED_PHASES
    authors = claim["scores"][METRIC]
    assert (authors["peak"], authors["peak_step"], authors["peak_phase"]) == (0.3383, 600, "entropy-seeking")
    assert authors["entropy_membership_r"] == pytest.approx(0.767, abs=1e-3)
    assert authors["correlate"]["alpha_req"]["rho"] == pytest.approx(0.686, abs=1e-3)
    steps = {row["step"]: row for row in claim["trajectory"]}
    assert steps[0][METRIC] == pytest.approx(-0.002, abs=1e-3)  # before training: nothing seen
    assert all(row["planted_accuracy"] == 0 for row in claim["trajectory"])  # no fact learnt verbatim
    assert claim["compression_seeking"] is None


def test_the_shipped_long_run_finds_three_phases_and_says_where_rho_peaks(cli, tmp_path):
    """L1's configuration on the planted corpus (docs/results.md §4): the claim tested with all three phases."""
    import json

    from geowh.repro.memorization_demo import LONG_SHIPPED_MODEL

    result = cli(["demo", "--memorization", "--long", "--shipped", "--db", tmp_path / "w.duckdb", "--json"])
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout)
    claim = loaded["claim"]
    assert loaded["model"] == LONG_SHIPPED_MODEL and loaded["imported"]["checkpoints"] == 48
    assert [(p["phase"], p["start_step"], p["end_step"]) for p in claim["phases"]] == [
        ("warmup", 0, 64), ("entropy-seeking", 64, 1000), ("compression-seeking", 1000, 8000)]
    authors = claim["scores"][METRIC]
    assert (authors["peak"], authors["peak_step"], authors["peak_phase"]) == (0.4973, 5000, "compression-seeking")
    # Against compression-seeking alone, entropy-seeking's ρ is lower, and significantly so; over all
    # checkpoints the warmup's ρ near 0 hides that (r −0.20, p 0.17).
    assert authors["entropy_vs_compression_r"] == pytest.approx(-0.833, abs=1e-3) and authors["entropy_vs_compression_p"] < 1e-6
    assert authors["entropy_membership_r"] == pytest.approx(-0.2015, abs=1e-3) and authors["entropy_membership_p"] > 0.1
    change = claim["compression_seeking"]
    assert change["steps"] == [1000, 8000]
    assert change["heldout_loss"]["end"] < change["heldout_loss"]["start"]  # generalisation improves through it
    assert change["planted_accuracy_1"] == {"start": 0.0, "end": 0.0}  # and no rare fact is learnt
