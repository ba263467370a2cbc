"""`geowh demo --memorization`: the memorization claim tested on a corpus with planted facts.

The paper reports that n-gram memorization (the Spearman ρ between ∞-gram and model
log-likelihoods of QA answers) peaks in the entropy-seeking phase. On the ordinary demo the ρ is
flat and near zero, which cannot tell "the score is blind" from "the claim fails". This demo
first gives the score something to see — facts planted with known Zipf frequencies
(`geowh.repro.facts`) — then runs the whole method on it:

1. **corpus** — the first `corpus_mb` MB of train-mini's default corpus with the planted facts'
   mentions mixed in (`OUT/corpus.txt`); a BPE trained on the ordinary text alone
   (`OUT/base-tokenizer/`), so an answer's token count does not depend on how often it was
   planted; the QA task over the facts, with each fact's frequency in the training split
   (`OUT/qa.jsonl`). Reused when present.
2. **the demo** — `geowh demo` on that run folder: train-mini, the ∞-gram index of the training
   split, ingest of every checkpoint with geometry and the three memorization scores, phases.
3. **accuracy** — per checkpoint and fact, whether the model's greedy answer (every answer token
   the argmax, teacher-forced) is the fact, imported into the warehouse as metrics
   `planted_accuracy[_BAND]` with the held-out loss (`heldout_loss`), so `geowh correlate`
   reads them.
4. **the claim** — `claim(wh, model)`: where each ρ peaks, the correlation of entropy-seeking
   membership with ρ (point-biserial, with its p-value; over all checkpoints, and against the
   compression-seeking phase alone), `geowh correlate` of ρ with the geometry, and what the
   compression-seeking phase (if found) does to the rare facts and the held-out loss.

`long_config()` is the same on L1's model and 8,000-step schedule (`geowh demo --memorization
--long`), the run in which `geowh phases` finds all three phases. Both measured trajectories
ship in `geowh/data/` (`load_shipped`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from geowh.errors import InputError
from geowh.outputs import write_text
from geowh.progress import Event, Progress, silent
from geowh.repro import facts as planted
from geowh.repro.demo import DEFAULT_N, TASK_FILE, DemoConfig
from geowh.warehouse import Warehouse, as_warehouse

CORPUS_FILE = "corpus.txt"
BASE_TOKENIZER = "base-tokenizer"
ACCURACY_FILE = "planted-accuracy.parquet"
SHIPPED_FILE = "demo-memorization.parquet"
SHIPPED_MODEL = "demo-memorization-shipped"
LONG_SHIPPED_FILE = "demo-memorization-long.parquet"
LONG_SHIPPED_MODEL = "demo-memorization-long-shipped"
# --long: L1 trains 32.8M tokens, ~65 passes over the 15-minute demo's 2 MB (~0.5M tokens) of
# ordinary text; over 16 MB (~3.9M tokens) ~8, and that is the run that was measured.
LONG_CORPUS_MB = 16.0
ACCURACY = "planted_accuracy"
HELDOUT = "heldout_loss"
SCORES = ("memorization_spearman", "memorization_spearman_per_token", "memorization_spearman_partial_length")
# The run: L1's narrow model (2 layers, d = 32; docs/train-mini.md) with a 2k vocabulary and half
# its batch, on a 2 MB slice of the default corpus: sized for 15 minutes on 2 CPU cores. L1's own
# size (|V| 8,000, batch 32) took 3.5–11 s a step on the loaded team machine, hours for a run.
TRAIN: dict[str, Any] = {"layers": 2, "d_model": 32, "vocab": 2000, "batch_size": 16, "seq_len": 128, "lr": 2e-3, "checkpoints": 16}
STEPS = 600


@dataclass(frozen=True)
class MemorizationDemoConfig:
    """The planted facts and the run: `facts` facts with Zipf frequencies from `max_frequency` to 1,
    mixed into the first `corpus_mb` MB of the default corpus (`corpus`: other text files instead);
    `train` is a TrainConfig (default TRAIN, its corpus and tokenizer set here), `steps` its step
    count (default STEPS); the rest as `DemoConfig`."""

    facts: int = 96
    max_frequency: int = 1000
    corpus_mb: float = 2.0
    corpus: tuple[str, ...] = ()
    seed: int = 0
    train: Any = None
    steps: int | None = None
    n: int = DEFAULT_N
    max_len: int = 128
    name: str | None = None
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self):
        if self.corpus_mb <= 0:
            raise InputError("the ordinary corpus's size must be positive")
        planted.zipf_frequencies(self.facts, self.max_frequency)  # checks both


@dataclass
class MemorizationDemoSummary:
    """What `memorization_demo` did: the plain demo's summary, the facts and the claim's test."""

    demo: dict
    facts: dict
    claim: dict
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    """CPU seconds of this process (user + system) during the call."""

    def to_dict(self) -> dict:
        return asdict(self)


def memorization_demo(out: str | Path, db=None, config: MemorizationDemoConfig = MemorizationDemoConfig(),
                      *, progress: Progress = silent) -> MemorizationDemoSummary:
    """Plant facts in a corpus, train on it, ingest with memorization, score the facts, test the claim.

    Resumable as `demo` is: every stage reuses what OUT holds. `progress` hears what `demo` tells,
    and a status line per stage of its own (geowh/progress.py).

    Example:
        summary = memorization_demo("runs/mem", "mem.duckdb")
        summary.claim["scores"]["memorization_spearman"]["peak_phase"]   # 'entropy-seeking'?
    """
    import os

    from geowh.repro.demo import demo
    from geowh.settings import settings

    started, cpu = time.monotonic(), os.times()
    out = Path(out).expanduser()
    wh = as_warehouse(db if db is not None else settings().db)
    seconds: dict[str, float] = {}
    t = time.monotonic()
    train, facts = prepare(out, config, progress)
    seconds["corpus"] = round(time.monotonic() - t, 1)
    summary = demo(out, wh, DemoConfig(steps=config.steps or STEPS, train=train, n=config.n, max_len=config.max_len,
                                      name=config.name, device=config.device, threads=config.threads), progress=progress)
    seconds |= {f"demo_{k}": v for k, v in summary.seconds.items()}
    t = time.monotonic()
    progress(Event("status", "scoring the planted facts at every checkpoint"))
    accuracy = score_checkpoints(out, summary.model, config.device, config.threads)
    _import(wh, accuracy)
    seconds["accuracy"] = round(time.monotonic() - t, 1)
    result = claim(wh, summary.model)
    seconds["total"] = round(time.monotonic() - started, 1)
    after = os.times()
    return MemorizationDemoSummary(
        demo=summary.to_dict(), facts=facts, claim=result, seconds=seconds,
        cpu_seconds=round(sum(after[:4]) - sum(cpu[:4]), 1),
    )


def long_config(**overrides) -> MemorizationDemoConfig:
    """`geowh demo --memorization --long`: L1's model and schedule (`geowh demo --long`'s `long_run()`:
    2 layers, d 32, |V| 8,000, 8,000 steps) on LONG_CORPUS_MB of ordinary text with the same facts."""
    from geowh.repro.demo import long_run

    train, steps = long_run()
    return MemorizationDemoConfig(train=train, steps=steps, corpus_mb=LONG_CORPUS_MB, **overrides)


# -- stage 1: the corpus with planted facts --------------------------------------------------------


def prepare(out: Path, config: MemorizationDemoConfig, progress: Progress = silent):
    """(TrainConfig, facts summary): OUT/corpus.txt, OUT/base-tokenizer/ and OUT/qa.jsonl, made or reused."""
    from geowh.repro.demo import training_documents
    from geowh.repro.train import TrainConfig, build_tokenizer

    base = config.train or TrainConfig(**TRAIN)
    corpus, tokenizer, task = out / CORPUS_FILE, out / BASE_TOKENIZER, out / TASK_FILE
    train = replace(base, corpus=(str(corpus.resolve()),), tokenizer=str(tokenizer.resolve()))
    facts = planted.plant(config.facts, config.max_frequency, config.seed)
    if not (corpus.is_file() and (tokenizer / "tokenizer.json").is_file()):
        out.mkdir(parents=True, exist_ok=True)
        progress(Event("status", "reading the ordinary corpus"))
        documents = ordinary_documents(config)
        progress(Event("status", "training the tokenizer on the ordinary text"))
        # without the facts: a frequent answer would otherwise become one token, and its
        # log-likelihood would rise with its frequency before the model learnt anything
        build_tokenizer(documents, replace(base, tokenizer=None)).save_pretrained(tokenizer)
        mixed = planted.mix(documents, facts, config.seed)
        write_text(corpus, "".join(d + "\n" for d in mixed))
        progress(Event("info", f"planted {len(facts)} facts, {sum(f.planted for f in facts):,} mentions, "
                               f"among {len(documents):,} documents → {corpus}"))
    if not task.is_file():
        counts = planted.trained_frequencies(facts, training_documents(train))
        planted.write_task(task, facts, counts)
    rows = planted.read_task(task)
    bands: dict[str, int] = {}
    for row in rows:
        bands[row["band"]] = bands.get(row["band"], 0) + 1
    return train, {"file": str(task), "facts": len(rows), "mentions": sum(r["planted"] for r in rows),
                   "trained_mentions": sum(r["trained"] for r in rows), "bands": bands}


def ordinary_documents(config: MemorizationDemoConfig) -> list[str]:
    """The ordinary text: `config.corpus`'s files, else the default corpus's first `corpus_mb` MB."""
    from geowh.repro.corpus import load_corpus

    texts = load_corpus(list(config.corpus) or None).texts
    kept, size = [], 0
    for text in texts:
        if size >= config.corpus_mb * 1e6:
            break
        kept.append(text)
        size += len(text.encode()) + 1
    return kept


# -- stage 3: accuracy on the planted facts --------------------------------------------------------


def fact_scores(model, tokenizer, rows: list[dict], batch_size: int = 64) -> list[tuple[float, bool]]:
    """(log P(answer | prompt), greedy-correct) per task row: correct when every answer token is the
    model's argmax given the prompt and the answer tokens before it (teacher-forced greedy decoding).
    Items as `answer_logliks` reads them; batches right-padded and masked."""
    import torch

    from geowh.ingest.measurements.tasks import QAItem

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for row in rows:
        item = QAItem(row["id"], row["question"], row["answer"])
        encoded.append((tokenizer(item.prompt, add_special_tokens=True)["input_ids"],
                        tokenizer(item.target, add_special_tokens=False)["input_ids"]))
    model.eval()
    scores = []
    for begin in range(0, len(encoded), batch_size):
        batch = encoded[begin : begin + batch_size]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, (prompt, answer) in enumerate(batch):
            ids[b, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            mask[b, : len(prompt) + len(answer)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for b, (prompt, answer) in enumerate(batch):
            predicting = logits[b, len(prompt) - 1 : len(prompt) + len(answer) - 1]  # (answer tokens, vocab)
            target = torch.tensor(answer, device=device)
            logp = torch.log_softmax(predicting, dim=-1).gather(1, target[:, None])[:, 0]
            scores.append((float(logp.double().sum()), bool((predicting.argmax(-1) == target).all())))
    return scores


def score_checkpoints(out: Path, model_name: str, device: str = "auto", threads: int | None = None):
    """Accuracy by frequency band and held-out loss per checkpoint of OUT, as a wide frame (model, step,
    planted_accuracy, planted_accuracy_BAND…, heldout_loss); cached in OUT/planted-accuracy.parquet."""
    import polars as pl
    import torch

    from geowh.ingest.sources.models import resolve_device
    from geowh.repro.demo import cpu_threads
    from geowh.warehouse.names import local_step

    cache = out / ACCURACY_FILE
    steps = sorted(s for p in out.iterdir() if p.is_dir() and (s := local_step(p.name)) is not None
                   and (p / "config.json").is_file())
    if cache.is_file():
        frame = pl.read_parquet(cache)
        if frame["step"].to_list() == steps and frame["model"][0] == model_name:
            return frame
    rows = planted.read_task(out / TASK_FILE)
    losses = {r["step"]: r.get("eval_loss") for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())}
    dev = resolve_device(device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_threads())  # as `demo` does: a shared CPU loses much to extra threads
    try:
        records = [_accuracy(out / f"step{step}", step, model_name, rows, losses, dev) for step in steps]
    finally:
        torch.set_num_threads(before)
    frame = pl.DataFrame(records)
    frame.write_parquet(cache)
    return frame


def _accuracy(folder: Path, step: int, model_name: str, rows: list[dict], losses: dict, dev) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).to(dev)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    correct = [ok for _, ok in fact_scores(model, tokenizer, rows)]
    record: dict[str, Any] = {"model": model_name, "step": step, ACCURACY: sum(correct) / len(correct)}
    for name in planted.band_names():
        picked = [ok for ok, row in zip(correct, rows) if row["band"] == name]
        record[accuracy_metric(name)] = sum(picked) / len(picked) if picked else None
    record[HELDOUT] = losses.get(step)
    return record


def accuracy_metric(band: str) -> str:
    """The metric name of a band's accuracy: planted_accuracy_1, _2_9, _10_99, _100plus."""
    return f"{ACCURACY}_{band.replace('-', '_').replace('+', 'plus')}"


def _import(wh: Warehouse, frame) -> None:
    """The accuracy frame into `metrics` (a file import, so `geowh correlate` and SQL read it)."""
    from geowh.queries.imports import import_metrics

    frame = frame.drop([c for c in frame.columns if c not in ("model", "step") and frame[c].null_count()])
    path = Path(wh.path).with_name(f".{Path(wh.path).name}.planted-accuracy.parquet")
    frame.write_parquet(path)
    try:
        import_metrics(wh, path)
    finally:
        path.unlink(missing_ok=True)


# -- stage 4: the claim ----------------------------------------------------------------------------


def trajectory(wh: Warehouse, model: str):
    """One row per checkpoint: step, rankme, alpha_req, the three ρ (and the authors' p-value), accuracy by band,
    held-out loss; from the warehouse (measured or imported)."""
    import polars as pl

    frame = wh.query(
        "SELECT c.step, m.metric, m.layer, m.value FROM metrics m JOIN checkpoints c USING (model, checkpoint) "
        "WHERE m.model = ? AND c.step IS NOT NULL AND (m.metric IN ('rankme', 'alpha_req', ?, ?, ?, ?) "
        "OR m.metric LIKE 'planted_accuracy%')",
        [model, *SCORES, HELDOUT],
    )
    if not frame.height:
        raise InputError(f"the warehouse has no trajectory of {model}")
    # the geometry at the last layer measured (the demo's ingest measures that one alone)
    last = frame.filter(pl.col("metric") == "rankme")["layer"].max()
    if last is not None:  # an imported trajectory has no layers
        frame = frame.filter(pl.col("layer").is_null() | (pl.col("layer") == last))
    wide = frame.pivot(on="metric", index="step", values="value", aggregate_function="first").sort("step")
    p = wh.query(
        "SELECT c.step, (m.params ->> '$.p_value')::DOUBLE AS memorization_p FROM metrics m JOIN checkpoints c "
        "USING (model, checkpoint) WHERE m.model = ? AND m.metric = ?", [model, SCORES[0]])
    if p.height:
        wide = wide.join(p, on="step", how="left")
    return wide.with_columns(pl.col("step").cast(pl.Int64))


def phase_of(step: int, found: list[dict]) -> str | None:
    """The phase a checkpoint belongs to: a boundary step belongs to the phase it ends (the first phase takes step 0)."""
    for k, phase in enumerate(found):
        if (phase["start_step"] < step or (k == 0 and step == phase["start_step"])) and step <= phase["end_step"]:
            return phase["phase"]
    return None


def claim(wh: Warehouse, model: str, found: list[dict] | None = None) -> dict:
    """Does memorization ρ peak in the entropy-seeking phase, and does compression-seeking coincide with a
    gain on rare facts or held-out loss? Every number the answer rests on, from the warehouse."""
    import numpy as np

    from geowh.queries.correlate import correlate, correlation
    from geowh.queries.phases import phases

    if found is None:
        found = phases(wh, model, store=False).to_dicts()
    found = [p for p in found if p.get("stage") in (None, "pretrain")]
    traj = trajectory(wh, model)
    rows = traj.to_dicts()
    for row in rows:
        row["phase"] = phase_of(row["step"], found)
    scores = {}
    for metric in SCORES:
        points = [(r["step"], r[metric], r["phase"]) for r in rows
                  if r.get(metric) is not None and math.isfinite(r[metric])]
        if len(points) < 3:
            continue
        peak = max(points, key=lambda p: p[1])
        inside = np.array([p[2] == "entropy-seeking" for p in points], dtype=float)
        values = np.array([p[1] for p in points])
        r_pb, p_pb = correlation(inside, values, "pearson")  # point-biserial: membership (0/1) against ρ
        # Against the phase the paper says comes after: the warmup's low ρ would otherwise count
        # against entropy-seeking's rivals and favour it.
        later = [(p[2] == "entropy-seeking", p[1]) for p in points if p[2] in ("entropy-seeking", "compression-seeking")]
        r_ec, p_ec = correlation(np.array([a for a, _ in later], float), np.array([v for _, v in later]), "pearson")
        by_phase = {}
        for name in dict.fromkeys(p[2] for p in points):
            v = [p[1] for p in points if p[2] == name]
            by_phase[str(name)] = {"n": len(v), "mean": _r(float(np.mean(v))), "max": _r(max(v))}
        geometry = {}
        for other in ("rankme", "alpha_req", ACCURACY):
            try:
                c = correlate(wh, model, other, metric).to_dicts()[0]
                geometry[other] = {"rho": _r(c["rho"]), "p_value": _p(c["p_value"]), "n": c["n"]}
            except InputError as e:  # a series the warehouse lacks
                geometry[other] = {"error": str(e)}
        scores[metric] = {
            "peak": _r(peak[1]), "peak_step": peak[0], "peak_phase": peak[2], "last": _r(points[-1][1]),
            "entropy_membership_r": _r(r_pb), "entropy_membership_p": _p(p_pb), "n": len(points),
            "entropy_vs_compression_r": _r(r_ec), "entropy_vs_compression_p": _p(p_ec),
            "by_phase": by_phase, "correlate": geometry,
        }
    compression = [p for p in found if p["phase"] == "compression-seeking"]
    change: dict[str, Any] | None = None
    if compression:
        first, last = compression[0]["start_step"], compression[-1]["end_step"]
        at = {r["step"]: r for r in rows}
        keys = [k for k in rows[0] if k.startswith(ACCURACY) or k == HELDOUT]
        change = {k: {"start": _r(at[first].get(k)), "end": _r(at[last].get(k))} for k in keys
                  if first in at and last in at}
        change["steps"] = [first, last]
    return {
        "model": model,
        "phases": [{k: p[k] for k in ("phase", "start_step", "end_step")} for p in found],
        "scores": scores,
        "compression_seeking": change,
        "trajectory": rows,
    }


# -- the shipped trajectory ------------------------------------------------------------------------


def write_shipped(wh, model: str, directory: str | Path, *, long: bool = False) -> Path:
    """The measured trajectory of `model` (geometry, the three ρ, accuracy, held-out loss) as the wide
    file `import-metrics` reads, SHIPPED_FILE (LONG_SHIPPED_FILE) in `directory` (how geowh/data/ got them)."""
    import polars as pl

    frame = trajectory(as_warehouse(wh), model).drop("memorization_p", strict=False)
    path = Path(directory) / (LONG_SHIPPED_FILE if long else SHIPPED_FILE)
    frame.with_columns(pl.lit(model).alias("model")).select("model", *frame.columns).write_parquet(
        path, compression="zstd", statistics=False)
    return path


def load_shipped(wh, *, long: bool = False) -> dict:
    """Import a shipped trajectory into `wh` (again: a no-op) — the 15-minute demo's as SHIPPED_MODEL,
    with `long` the --long run's as LONG_SHIPPED_MODEL — find its phases and test the claim on it, as
    `claim` does on a run measured here."""
    from importlib.resources import files

    from geowh.queries.imports import import_metrics
    from geowh.queries.phases import phases

    wh = as_warehouse(wh)
    file, model = (LONG_SHIPPED_FILE, LONG_SHIPPED_MODEL) if long else (SHIPPED_FILE, SHIPPED_MODEL)
    imported = import_metrics(wh, Path(str(files("geowh") / "data" / file)), model=model).to_dicts()
    found = phases(wh, model).to_dicts()
    return {"model": model, "imported": imported[0], "claim": claim(wh, model, found)}


def _r(x, digits: int = 4):
    return round(x, digits) if x is not None and math.isfinite(x) else None


def _p(p):
    """A p-value to 3 significant digits (rounding to decimals would print 3e-9 as 0)."""
    return float(f"{p:.3g}") if p is not None and math.isfinite(p) else None

