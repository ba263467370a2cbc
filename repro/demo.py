"""`geowh demo`: the whole method on one laptop, offline — train, index, ingest, phases, plot.

`demo(OUT, db)` chains what the other commands do, each stage skipping the work already done
in OUT (so an interrupted demo continues where it stopped):

1. **train** — `train_mini(OUT)`: a mini Pythia on the default corpus (the docstrings and
   comments of the installed Python code), a fixed number of steps (DEFAULT_STEPS), so that
   every machine trains the same run; checkpoints `OUT/step{N}/`, held-out `OUT/probe.txt`.
   A finished run is reused, an interrupted one resumed. `long_run()` is the longer run of
   docs/train-mini.md (`geowh demo --long`).
2. **index** — the training split (the corpus minus the probe documents, exactly the documents
   the model read) written to `OUT/train.txt`, and an infini-gram index of it in `OUT/index/`,
   tokenized with the run's own tokenizer. Reused when `OUT/index/geowh-index.json` exists.
3. **task** — a QA task derived from the corpus, `OUT/qa.jsonl` (see `derive_task`): for public
   functions and classes of the Python sources, `Question: What does os.path.join do? Answer:
   <the first sentence of its docstring>`, kept only when that sentence occurs in the index of
   the training split. Reused when present.
4. **ingest** — every checkpoint: the geometry on the probe and the ∞-gram memorization of the
   task, in one transaction per checkpoint (`geowh ingest … --memorization`); checkpoints done
   with the same settings are skipped.
5. **phases** — `geowh phases` on the trajectory, and two plots: `OUT/geometry.png` (RankMe and
   αReQ) and `OUT/memorization.png` (memorization ρ), both with the phases shaded.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import sysconfig
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geowh.errors import InputError
from geowh.outputs import write_text
from geowh.progress import Event, Progress, silent
from geowh.settings import settings
from geowh.warehouse import Warehouse, as_warehouse

INDEX_DIR = "index"
TRAIN_TEXT = "train.txt"
TASK_FILE = "qa.jsonl"
PLOTS = {"geometry": ("rankme", "alpha_req"),
         "memorization": ("memorization_spearman", "memorization_spearman_per_token",
                          "memorization_spearman_partial_length")}
# A step count, not a time budget: a budget plans fewer steps on a slower or busier machine and
# so gives another trajectory. 1,000 steps of the default model took 977 steps' time ≈ 7 minutes
# on 2 shared CPU cores; the whole demo's measured time is in README.md and docs/results.md.
DEFAULT_STEPS = 1000
# `geowh demo --long`: run L1 of docs/train-mini.md, a bottleneck of |V|/d = 250 trained for
# 61 tokens per parameter (32.8M tokens); its measured trajectory ships in SHIPPED (`load_shipped`).
LONG_CONFIG = {"layers": 2, "d_model": 32, "vocab": 8000, "batch_size": 32, "seq_len": 128, "lr": 2e-3,
               "checkpoints": 32}
LONG_STEPS = 8000
SHIPPED = {"metrics": "demo-long-metrics.parquet", "spectra": "demo-long-spectra.parquet"}
SHIPPED_MODEL = "demo-long-shipped"
DEFAULT_N = 500
DEFAULT_MAX_LEN = 128
DEFAULT_QA_ITEMS = 300
# A derived answer: the first sentence of a docstring, of this many words.
ANSWER_WORDS = (4, 30)
# At most this many items per module, so that the task spans many modules.
ITEMS_PER_MODULE = 2
_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")


@dataclass
class DemoSummary:
    """What `demo` did, stage by stage: `geowh demo --json` prints `to_dict()`."""

    out: str
    db: str
    model: str
    train: dict
    """train-mini's summary: status trained, resumed or reused."""
    index: dict
    """The index: directory, documents, tokens, status built or reused."""
    task: dict
    """The derived QA task: file, items, status derived or reused."""
    ingest: dict
    """Checkpoints ok (ingested now), skipped (already done) and failed."""
    phases: list[dict]
    memorization_by_phase: list[dict]
    plots: dict[str, str]
    threads: int
    """torch's CPU threads during the call."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds of each stage of this call, and the total."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DemoConfig:
    """What `demo` does besides where: the training budget, the probe, the QA task, the device.

    `steps` is train-mini's step count (default: that of the run in OUT, else DEFAULT_STEPS);
    `minutes` instead plans the steps from a wall-clock budget (corpus preparation included), so
    the trajectory then depends on the machine and its load. `train` is a `TrainConfig` (default:
    the one of the run in OUT, else train-mini's). `n` and `max_len` size the probe, `qa_items`
    the task; `qa_sources` are the Python files the task is derived from (default: the standard
    library, the first source of the default corpus). `name` is the model's name in the
    warehouse (default: OUT's folder name). `threads` are torch's CPU threads for the call
    (default: `cpu_threads()`, the cores the load average leaves free).
    """

    minutes: float | None = None
    steps: int | None = None
    train: Any = None
    n: int = DEFAULT_N
    max_len: int = DEFAULT_MAX_LEN
    qa_items: int = DEFAULT_QA_ITEMS
    qa_sources: tuple[str, ...] | None = None
    name: str | None = None
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self):
        if self.minutes is not None and self.steps is not None:
            raise InputError("give --steps or --minutes, not both")
        if self.qa_items < 3:
            raise InputError("--qa-items must be at least 3: memorization is a rank correlation across items")
        if self.threads is not None and self.threads < 1:
            raise InputError("--threads must be at least 1")
        if self.qa_sources is not None:
            object.__setattr__(self, "qa_sources", tuple(str(p) for p in self.qa_sources))


def demo(
    out: str | Path,
    db: str | Path | Warehouse | None = None,
    config: DemoConfig = DemoConfig(),
    *,
    progress: Progress = silent,
) -> DemoSummary:
    """Train a mini Pythia in `out`, index its corpus, derive a QA task, ingest every checkpoint with
    geometry and memorization into `db`, find the phases and plot them. Resumable.

    `config` says how (DemoConfig); `progress` hears a `stage` event per stage and the events of
    train-mini, the index build and the ingest (geowh/progress.py); by default nothing is told.

    Example:
        summary = demo("runs/demo", "demo.duckdb", DemoConfig(steps=200))
        summary.phases   # [{'phase': 'warmup', 'start_step': 0, …}, {'phase': 'entropy-seeking', …}]
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(config.threads or cpu_threads())
    try:
        return _demo(Path(out).expanduser(), as_warehouse(db if db is not None else settings().db), config,
                     progress)
    finally:
        torch.set_num_threads(before)


def cpu_threads() -> int:
    """CPU threads for torch: the cores not already busy by the 1-minute load average (at least 1).

    On a machine shared with other jobs, torch's default (every core) oversubscribes the CPUs,
    and its threads then wait on each other: on 2 cores with one other busy process, a
    train-mini step took 3.7 s with 2 threads and 0.39 s with 1.
    """
    import os

    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(os.getloadavg()[0])))


def _demo(out: Path, wh: Warehouse, cfg: DemoConfig, progress: Progress) -> DemoSummary:
    import torch

    from geowh.ingest.config import IngestConfig, Selection
    from geowh.ingest.engine.run import ingest
    from geowh.queries.phases import phases
    from geowh.queries.plot import plot
    from geowh.repro.train import TrainConfig, train_mini

    started = time.monotonic()
    saved, planned = saved_run(out)
    config = cfg.train or saved or TrainConfig()
    minutes, steps = cfg.minutes, cfg.steps
    if minutes is None and steps is None:
        steps = planned or DEFAULT_STEPS
    seconds: dict[str, float] = {}
    progress(Event("info", f"torch on {torch.get_num_threads()} CPU thread(s); run folder {out}, warehouse {wh.path}"))

    def stage(key: str, title: str):
        progress(Event("stage", f"{len(seconds) + 1}/5 {title}"))
        return _Timer(seconds, key)

    with stage("train", "train-mini → checkpoints"):
        trained = train_mini(out, config, minutes=minutes, steps=steps, device=cfg.device, progress=progress)
        progress(Event("info", f"{trained.status}: {trained.steps:,} steps, {len(trained.checkpoints)} checkpoints, "
                               f"held-out loss {trained.eval_loss}"))

    with stage("index", "∞-gram index of the training split"):
        index = ensure_index(out, config, progress)

    with stage("task", "QA task from the corpus"):
        task = ensure_task(out, cfg.qa_items, cfg.qa_sources, progress)

    with stage("ingest", "ingest: geometry + memorization per checkpoint"):
        # fp32 features: the demo's models are narrow (d 32–128), and in their warmup
        # collapse bf16 rounds away the spectrum's tail, where αReQ is fitted (run A of
        # docs/metrics.md: αReQ 7.1 in fp32, 3.0 in bf16); their forward is cheap anyway.
        summary = ingest(str(out), IngestConfig(probe=str(out / "probe.txt"), n=cfg.n, max_len=cfg.max_len,
                                                device=cfg.device, dtype="float32"),
                         Selection(name=cfg.name), db=wh.path, progress=progress,
                         options={"memorization": task["file"], "index": index["directory"]})
        ingested = {"model": summary.model, "config_key": summary.config_key, "ok": summary.count("ok"),
                    "skipped": summary.count("skipped"), "failed": summary.failed,
                    "errors": [c for c in summary.checkpoints if c["status"] == "failed"]}
        progress(Event("info", f"{ingested['ok']} ingested, {ingested['skipped']} already done, {ingested['failed']} failed"))

    with stage("phases", "phases and plots"):
        found = phases(wh, summary.model, progress=progress)
        plots = {}
        for key, metrics in PLOTS.items():
            plots[key] = str(out / f"{key}.png")
            plot(wh, summary.model, metrics=metrics, out=plots[key], progress=progress, force=True)  # a rerun redraws
        by_phase = memorization_by_phase(wh, summary.model, found.to_dicts())

    seconds["total"] = round(time.monotonic() - started, 1)
    return DemoSummary(
        out=str(out), db=str(wh.path), model=summary.model, train=_train_dict(trained), index=index, task=task,
        ingest=ingested, phases=found.to_dicts(), memorization_by_phase=by_phase, plots=plots,
        threads=torch.get_num_threads(), seconds=seconds,
    )


def long_run():
    """(TrainConfig, steps) of `geowh demo --long`: the run of docs/train-mini.md whose measured
    trajectory ships as `geowh/data/` (see `shipped_trajectory`)."""
    from geowh.repro.train import TrainConfig

    return TrainConfig(**LONG_CONFIG), LONG_STEPS


def shipped_files() -> dict[str, Path]:
    """The shipped trajectory of `geowh demo --long`: Parquet files of its `metrics` rows (the long
    layout of `geowh import-metrics`) and its `spectra` rows, measured here (docs/train-mini.md)."""
    from importlib.resources import files

    return {kind: Path(str(files("geowh") / "data" / name)) for kind, name in SHIPPED.items()}


def write_shipped(wh: str | Path | Warehouse, model: str, directory: str | Path) -> dict[str, Path]:
    """Write `model`'s metrics and spectra from `wh` as the SHIPPED files in `directory` (how
    `geowh/data/` was made from the run's warehouse)."""
    wh = as_warehouse(wh)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frames = {
        "metrics": wh.query(
            "SELECT m.model, m.checkpoint, c.step, c.tokens, c.stage, m.probe, m.layer, m.pooling, m.metric, m.value, "
            "m.stderr FROM metrics m JOIN checkpoints c USING (model, checkpoint) WHERE m.model = ? "
            "AND m.index_dir IS NULL "  # the geometry: memorization scores belong to their index
            "ORDER BY c.step, m.probe, m.layer, m.pooling, m.metric", [model]),
        "spectra": wh.query(
            "SELECT s.model, s.checkpoint, s.probe, s.layer, s.pooling, s.n_samples, s.d, s.eigenvalues "
            "FROM spectra s JOIN checkpoints c USING (model, checkpoint) WHERE s.model = ? "
            "ORDER BY c.step, s.probe, s.layer, s.pooling", [model]),
    }
    if not frames["metrics"].height:
        raise InputError(f"the warehouse has no metrics of {model}")
    paths = {kind: directory / SHIPPED[kind] for kind in frames}
    for kind, frame in frames.items():
        frame.write_parquet(paths[kind], compression="zstd", statistics=False)
    return paths


def load_shipped(wh: str | Path | Warehouse) -> dict[str, Any]:
    """Import the shipped trajectory into `wh` as the model SHIPPED_MODEL (again: a no-op) and find
    its phases; {model, imported, spectra, phases}."""
    wh = as_warehouse(wh)
    import polars as pl

    from geowh.queries.imports import import_metrics
    from geowh.queries.phases import phases

    paths = shipped_files()
    imported = import_metrics(wh, paths["metrics"], model=SHIPPED_MODEL).to_dicts()
    spectra = pl.read_parquet(paths["spectra"]).with_columns(pl.lit(SHIPPED_MODEL).alias("model"))
    if imported[0]["status"] == "imported":
        run_id = wh.query("SELECT run_id FROM runs WHERE kind = 'import' AND model = ? ORDER BY started_at DESC "
                          "LIMIT 1", [SHIPPED_MODEL])["run_id"][0]
        wh.write({"spectra": spectra.with_columns(pl.lit(run_id).alias("run_id"))})
    found = phases(wh, SHIPPED_MODEL)
    return {"model": SHIPPED_MODEL, "imported": imported[0], "spectra": spectra.height, "phases": found.to_dicts()}


def saved_run(out: Path):
    """(TrainConfig, planned steps or None) of the train-mini run in OUT, or (None, None): rerunning
    the demo continues that run."""
    from geowh.repro.train import CONFIG_FILE, TrainConfig

    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        return None, None
    saved = json.loads(path.read_text())
    return TrainConfig.from_dict(saved["config"]), (saved.get("plan") or {}).get("total_steps")


# -- stage 2: the index ----------------------------------------------------------------------------


def ensure_index(out: Path, config, progress: Progress = silent) -> dict:
    """OUT/train.txt (the training split, one document per line) and its index OUT/index/, or those there."""
    from geowh.index.build import META_FILE, build_index, read_meta

    directory = out / INDEX_DIR
    if (directory / META_FILE).is_file():
        meta = read_meta(directory)
        progress(Event("info", f"reused {directory}: {meta.documents:,} documents, {meta.tokens:,} tokens"))
        return {"directory": str(directory), "documents": meta.documents, "tokens": meta.tokens, "status": "reused"}
    if directory.exists():  # a build killed before its metadata: start again
        shutil.rmtree(directory)
    text = out / TRAIN_TEXT
    if not text.is_file():
        write_text(text, "".join(d + "\n" for d in training_documents(config)))
    meta = build_index([text], str(out / "tokenizer"), directory, progress=progress)
    progress(Event("info", f"built {directory}: {meta.documents:,} documents, {meta.tokens:,} tokens in {meta.seconds:.0f} s"))
    return {"directory": str(directory), "documents": meta.documents, "tokens": meta.tokens, "status": "built"}


def training_documents(config) -> list[str]:
    """The documents train-mini trained on: its corpus minus the held-out probe documents."""
    from geowh.repro.corpus import load_corpus
    from geowh.repro.train import split_documents

    corpus = load_corpus(config.corpus, max_mb=config.corpus_mb)
    train, _ = split_documents(corpus.texts, config.probe_docs, config.seed)
    return train


# -- stage 3: the QA task --------------------------------------------------------------------------


def ensure_task(out: Path, items: int, sources: Sequence[str | Path] | None = None, progress: Progress = silent) -> dict:
    """OUT/qa.jsonl derived from the sources against OUT/index/, or the one there."""
    from geowh.index.index import Index

    path = out / TASK_FILE
    if path.is_file():
        count = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        progress(Event("info", f"reused {path}: {count} items"))
        return {"file": str(path), "items": count, "status": "reused"}
    files = [Path(f) for f in sources] if sources else stdlib_files()
    progress(Event("status", f"deriving up to {items} QA items from {len(files):,} Python files"))
    derived = derive_task(files, Index(out / INDEX_DIR, workers=1), items)
    if len(derived) < 3:
        raise InputError(
            f"only {len(derived)} QA item(s) found in the training split: give Python sources whose docstrings "
            "the corpus holds (qa_sources)"
        )
    write_text(path, "".join(json.dumps(row) + "\n" for row in derived))
    progress(Event("info", f"derived {path}: {len(derived)} items, e.g. {derived[0]['question']} → {derived[0]['answer']}"))
    return {"file": str(path), "items": len(derived), "status": "derived"}


def stdlib_files() -> list[Path]:
    """The standard library's .py files (tests excluded), sorted: where the default task comes from."""
    from geowh.repro.corpus import corpus_sources

    return corpus_sources()[0][2]


def derive_task(files: Sequence[Path], index, limit: int) -> list[dict]:
    """QA items `{id, question, answer}` from the docstrings of `files`, each answer found in `index`.

    For each public function, method or class with a docstring (files in order, at most
    ITEMS_PER_MODULE per module, distinct answers): the question is "What does MODULE.NAME do?"
    (a function or method) or "What is MODULE.NAME?" (a class), the answer the docstring's first
    sentence, white space collapsed as in the corpus, of 4–30 words. An item is kept only when
    its answer's tokens occur in the index (as a document's start or after a space), i.e. when the
    model was trained on that sentence.
    """
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    items: list[dict] = []
    seen: set[str] = set()
    for path in files:
        module = _module_name(path, roots)
        taken = 0
        for question, answer in _docstring_items(path, module):
            if taken >= ITEMS_PER_MODULE or len(items) >= limit:
                break
            if answer in seen or not _in_index(index, answer):
                continue
            seen.add(answer)
            items.append({"id": f"{module}:{len(items)}", "question": question, "answer": answer})
            taken += 1
        if len(items) >= limit:
            break
    return items


def _docstring_items(path: Path, module: str) -> Iterator[tuple[str, str]]:
    if module.startswith("_") or any(part.startswith("_") for part in module.split(".")[1:]):
        return
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return  # not text we can read: the corpus skipped it too

    def visit(node, prefix: str) -> Iterator[tuple[str, str]]:
        for child in node.body:
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if child.name.startswith("_"):
                continue
            name = f"{prefix}.{child.name}"
            answer = first_sentence(ast.get_docstring(child) or "")
            if answer:
                is_class = isinstance(child, ast.ClassDef)
                yield (f"What is {name}?" if is_class else f"What does {name} do?"), answer
            if isinstance(child, ast.ClassDef):
                yield from visit(child, name)

    yield from visit(tree, module)


def first_sentence(docstring: str) -> str | None:
    """The first sentence of a docstring's first paragraph, white space collapsed; None when unfit."""
    paragraph = docstring.strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    match = _SENTENCE.match(text)
    if not match:
        return None
    sentence = match.group(1)
    words = len(sentence.split())
    letters = sum(c.isalpha() or c == " " for c in sentence)
    if not ANSWER_WORDS[0] <= words <= ANSWER_WORDS[1] or letters < 0.8 * len(sentence) or ">>>" in sentence:
        return None
    return sentence


def _in_index(index, answer: str) -> bool:
    return any(index.count(index.tokenize(text)) > 0 for text in (answer, " " + answer))


def _module_name(path: Path, roots: Sequence[Path]) -> str:
    path = Path(path)
    for root in roots:
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join(parts) or path.stem
    return path.stem


# -- stage 5: memorization against the phases ------------------------------------------------------


def memorization_by_phase(wh, model: str, found: list[dict]) -> list[dict]:
    """Per phase: memorization ρ at its first and last checkpoint and its largest value (and where)."""
    from geowh.ingest.measurements.statistics import METRIC

    frame = wh.query(
        "SELECT c.step, m.value FROM metrics m JOIN checkpoints c USING (model, checkpoint) "
        "WHERE m.model = ? AND m.metric = ? AND c.step IS NOT NULL AND NOT isnan(m.value) ORDER BY c.step",
        [model, METRIC],
    )
    points = list(zip(frame["step"].to_list(), frame["value"].to_list()))
    rows = []
    for phase in found:
        if phase.get("stage") not in (None, "pretrain"):
            continue
        inside = [(s, v) for s, v in points if phase["start_step"] <= s <= phase["end_step"]]
        if not inside:
            continue
        peak = max(inside, key=lambda p: p[1])
        rows.append({
            "phase": phase["phase"], "start_step": phase["start_step"], "end_step": phase["end_step"],
            "memorization_start": _r(inside[0][1]), "memorization_end": _r(inside[-1][1]),
            "memorization_max": _r(peak[1]), "max_at_step": peak[0],
        })
    return rows


# -- helpers ---------------------------------------------------------------------------------------


def _train_dict(trained) -> dict:
    d = trained.to_dict()
    plan = d["config"].get("plan") or {}
    return {k: d[k] for k in ("status", "steps", "tokens", "parameters", "device", "train_loss", "eval_loss",
                              "seconds", "probe")} | {"checkpoints": len(d["checkpoints"]),
                                                      "corpus": d["corpus"].get("name"),
                                                      "step_seconds": plan.get("step_seconds")}


def _r(x: float) -> float | None:
    return round(x, 4) if x is not None and math.isfinite(x) else None



class _Timer:
    def __init__(self, seconds: dict[str, float], key: str):
        self.seconds, self.key = seconds, key

    def __enter__(self):
        self.start = time.monotonic()
        self.seconds[self.key] = 0.0  # the stage counts as begun (numbering)
        return self

    def __exit__(self, *exc):
        self.seconds[self.key] = round(time.monotonic() - self.start, 1)
