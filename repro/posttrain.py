"""`geowh posttrain BASE OUT`: SFT → DPO → RLVR from one checkpoint, offline, with TRL.

The second half of the study ("from pretraining to post-training") on a model you have: from
any checkpoint folder `ingest` reads, each stage trains with TRL (`SFTTrainer`, `DPOTrainer`,
`GRPOTrainer`: no RL loop of our own) and saves checkpoints on a log-spaced schedule, so that
`geowh ingest OUT` reads one stage-ordered series:

    OUT/pretrain-step{N}/   a copy of BASE (its step N, or 0): the series' starting point
    OUT/sft-step{S}/ …      each stage's checkpoints, S counted from 1 in every stage
    OUT/dpo-step{S}/ …      (the stage in the name: `geowh.warehouse.names.local_stage`)
    OUT/rlvr-step{S}/ …
    OUT/tasks/              the data, derived offline from the training corpus (see `derive_tasks`)
    OUT/posttrain.json      base, settings, tasks, and each stage's state (finished or not)

A checkpoint is written under OUT/.partial/ and renamed when complete, so ingest never reads
half of one. Running again reuses the finished stages; a stage that was interrupted restarts
from its start (its checkpoints are removed first, and those of every later stage, which were
trained from it). The data and the method: docs/posttrain.md.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geowh.checkers import TaskItem, read_task
from geowh.errors import InputError
from geowh.outputs import write_json, write_text
from geowh.progress import Event, Progress, silent
from geowh.warehouse.names import local_stage, local_step

STAGES = ("sft", "dpo", "rlvr")
CONFIG_FILE = "posttrain.json"
TASK_DIR = "tasks"
# The task files, by role (OUT/tasks/NAME.jsonl). `copy` is the in-distribution evaluation (held-out
# items) and the reward of RLVR; `phrase` the out-of-distribution one; the names are the defaults
# of `geowh phases --in-task/--ood-task/--reward-task` (queries/claims.py).
IN_TASK = "copy"
OOD_TASK = "phrase"
TRAIN_TASK = "copy-train"
PAIRS = "copy-pairs"
REWARD_CHECKER = "exact"
# Words the tasks are made of: frequent lowercase words of the corpus, 3 to 8 letters.
WORD = re.compile(r"^[a-z]{3,8}$")
VOCABULARY = 300
# Text of the corpus read for the phrase statistics: enough for stable trigram counts, in seconds.
PHRASE_CHARS = 6_000_000
# A phrase item: a word pair seen at least this often, followed by one word at least this share of the time.
PHRASE_MIN_COUNT = 20
PHRASE_MIN_SHARE = 0.6
# How DPO's rejected answers are made from the right one, in turn.
REJECTIONS = ("swap", "drop", "replace")
# Each stage's learning rate: SFT moves a tiny model quickly; DPO and GRPO start from it and must not undo it.
STAGE_LR = {"sft": 1e-3, "dpo": 2e-4, "rlvr": 2e-4}


@dataclass(frozen=True)
class PosttrainConfig:
    """What defines a post-training run; two runs with equal configs are the same run (device aside)."""

    stages: tuple[str, ...] = STAGES
    """Stages to run, a subset of sft, dpo, rlvr in that order."""
    steps: int = 200
    """Optimizer steps of each stage."""
    checkpoints: int = 8
    """Checkpoints of each stage, log-spaced from its first step to its last."""
    seed: int = 0
    device: str = "auto"
    batch_size: int = 16
    """Sequences per step (RLVR: completions per step, `generations` per prompt)."""
    generations: int = 4
    """RLVR: completions sampled per prompt (GRPO's group)."""
    max_new_tokens: int = 8
    """RLVR: longest sampled completion, in tokens."""
    beta: float = 0.1
    """DPO: the strength of the pull towards the reference (the SFT model)."""
    lr: float | None = None
    """Learning rate of every stage; None: each stage's own (STAGE_LR)."""
    train_items: int = 2000
    eval_items: int = 200
    """Held-out in-distribution items, and out-of-distribution items (each)."""
    corpus: tuple[str, ...] = ()
    """Text files the tasks are derived from; empty: train-mini's default corpus."""

    def __post_init__(self):
        check_stages(self.stages)
        for name in ("steps", "checkpoints", "batch_size", "generations", "max_new_tokens", "train_items", "eval_items"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.checkpoints > self.steps:
            raise InputError(f"--checkpoints {self.checkpoints} is more than --steps {self.steps}: at most one per step")
        if self.batch_size % self.generations:
            raise InputError(f"--batch-size {self.batch_size} must be a multiple of the {self.generations} generations "
                             "per prompt (GRPO samples whole groups)")
        if self.lr is not None and not self.lr > 0:
            raise InputError("--lr must be positive")

    def defines(self) -> dict:
        """The settings that make a run what it is (not which stages run now, not the device)."""
        return {k: v for k, v in asdict(self).items() if k not in ("stages", "device")} | {"corpus": list(self.corpus)}


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """`stages` as a tuple, refused unless a non-empty subset of sft, dpo, rlvr in that order."""
    stages = tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise InputError(f"--stages {','.join(stages)}: name stages of {','.join(STAGES)} (e.g. sft,dpo)")
    order = [STAGES.index(s) for s in stages]
    if order != sorted(set(order)):
        raise InputError(f"--stages {','.join(stages)}: each stage once, in the order {','.join(STAGES)}")
    return stages


def stage_steps(total: int, count: int) -> list[int]:
    """`count` steps of 1…total, log-spaced: the first steps (1, 2, …) and the last among them (one: the last)."""
    if count >= total:
        return list(range(1, total + 1))
    if count == 1:  # one checkpoint: the stage's result
        return [total]
    first = {1, total} | ({2} if count >= 3 else set())
    chosen, k = set(first), count
    while len(chosen) < count:  # rounding merges neighbours: ask for more points until there are enough
        chosen = first | {round(math.exp(math.log(total) * i / (k - 1))) for i in range(k)}
        k += 1
    while len(chosen) > count:  # too many after the last widening: drop the middle-most extras
        inner = sorted(chosen - {1, 2, total})
        chosen.discard(inner[len(inner) // 2])
    return sorted(chosen)


@dataclass
class PosttrainSummary:
    """What `posttrain` did: `geowh posttrain --json` prints `to_dict()`."""

    out: str
    base: str
    device: str
    stages: dict[str, dict] = field(default_factory=dict)
    """Per stage: status (trained, reused), steps, checkpoints, seconds, the last logged loss/reward."""
    checkpoints: list[str] = field(default_factory=list)
    """Every checkpoint folder of OUT, in series order."""
    tasks: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# -- the run -----------------------------------------------------------------------------------------


def posttrain(base: str | Path, out: str | Path, config: PosttrainConfig | None = None, *,
              progress: Progress = silent) -> PosttrainSummary:
    """Post-train the checkpoint `base` into `out`: the config's stages in order, each saving its checkpoints.

    Progress goes to `progress` (info lines, and a step bar per stage); by default it prints nothing.

    Example:
        summary = posttrain("runs/mini/step600", "runs/post", PosttrainConfig(steps=100))
        summary.checkpoints   # ['pretrain-step600', 'sft-step1', 'sft-step2', …, 'rlvr-step100']
    """
    from geowh.ingest.sources.models import device_name, resolve_device

    started = time.monotonic()
    config = config or PosttrainConfig()
    base, out = _check_base(base), Path(out).expanduser()
    dev = resolve_device(config.device)
    state = _load_state(out, base, config)
    out.mkdir(parents=True, exist_ok=True)
    start_name = _copy_base(base, out)
    tasks = derive_tasks(out, config, progress)
    state["tasks"] = tasks
    write_json(out / CONFIG_FILE, state)

    summary = PosttrainSummary(out=str(out), base=str(base), device=device_name(dev), tasks=tasks)
    for stage in config.stages:
        done = state["stages"].get(stage, {})
        if done.get("finished") and all((out / name / "config.json").is_file() for name in done["checkpoints"]):
            summary.stages[stage] = done | {"status": "reused"}
            continue
        _forget(out, state, stage)  # this stage and every later one, which were trained from it
        source = out / _last_before(out, stage, start_name)
        progress(Event("info", f"{stage}: {config.steps} steps from {source.name}, {config.checkpoints} checkpoints → {out}"))
        t = time.monotonic()
        logged = _run_stage(stage, source, out, config, dev, progress)
        state["stages"][stage] = {"finished": True, "steps": config.steps, "seconds": round(time.monotonic() - t, 2),
                                  "checkpoints": [f"{stage}-step{s}" for s in stage_steps(config.steps, config.checkpoints)],
                                  "last_log": logged}
        write_json(out / CONFIG_FILE, state)
        summary.stages[stage] = state["stages"][stage] | {"status": "trained"}
    for scratch in (".partial", ".work"):  # empty once every checkpoint is renamed into place
        if (out / scratch).is_dir() and not any((out / scratch).rglob("*")):
            shutil.rmtree(out / scratch)
    summary.checkpoints = series_folders(out)
    summary.seconds = round(time.monotonic() - started, 2)
    return summary


def series_folders(out: Path) -> list[str]:
    """OUT's checkpoint folders in series order (stage, then step): what `geowh ingest OUT` reads."""
    order = {s: i for i, s in enumerate(("pretrain", "mid", *STAGES))}
    found = [p.name for p in Path(out).iterdir() if p.is_dir() and local_step(p.name) is not None]
    return sorted(found, key=lambda n: (order.get(local_stage(n) or "pretrain", 0), local_step(n) or 0))


def _check_base(base: str | Path) -> Path:
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        raise InputError(f"{base} is not a checkpoint folder (no config.json): give one checkpoint, "
                         "e.g. runs/mini/step600 of geowh train-mini")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise InputError(f"{base} holds no weights (*.safetensors or *.bin): give a saved checkpoint")
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        raise InputError(f"{base} holds no tokenizer: save the tokenizer beside the weights "
                         "(tokenizer.save_pretrained) — train-mini's checkpoints have one")
    return path.resolve()


def _load_state(out: Path, base: Path, config: PosttrainConfig) -> dict:
    """OUT's state; a fresh one for a new OUT; an error when OUT holds another run."""
    path = out / CONFIG_FILE
    fresh = {"base": str(base), "config": config.defines(), "stages": {}, "tasks": {}}
    if not path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise InputError(f"{out} is not empty and holds no posttrain run: choose an empty or new folder")
        return fresh
    state = json.loads(path.read_text())
    if state["base"] != str(base):
        raise InputError(f"{out} holds a posttrain run of {state['base']}, not {base}: choose a new folder")
    changed = [f"{k} {state['config'].get(k)!r} → {v!r}" for k, v in config.defines().items() if state["config"].get(k) != v]
    if changed:
        raise InputError(f"{out} holds a posttrain run with other settings ({'; '.join(changed)}): rerun with the "
                         "same options to resume it, or choose a new folder")
    return state


def _copy_base(base: Path, out: Path) -> str:
    """BASE copied into OUT as the series' first checkpoint (pretrain-step{N}); its folder name."""
    name = f"{local_stage(base.name) or 'pretrain'}-step{local_step(base.name) or 0}"
    if not (out / name / "config.json").is_file():
        partial = out / ".partial" / name
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(base, partial, ignore=shutil.ignore_patterns("optimizer*", "*.pt", "trainer_state.json"))
        partial.replace(out / name)
    return name


def _last_before(out: Path, stage: str, start: str) -> str:
    """The checkpoint a stage starts from: the last one of the nearest earlier stage OUT holds, else the base."""
    for earlier in reversed(STAGES[: STAGES.index(stage)]):
        names = [n for n in series_folders(out) if local_stage(n) == earlier]
        if names:
            return names[-1]
    return start


def _forget(out: Path, state: dict, stage: str) -> None:
    """Remove the checkpoints and state of `stage` and of every later stage."""
    later = STAGES[STAGES.index(stage):]
    for name in series_folders(out):
        if local_stage(name) in later:
            shutil.rmtree(out / name)
    shutil.rmtree(out / ".partial", ignore_errors=True)
    shutil.rmtree(out / ".work", ignore_errors=True)
    for s in later:
        state["stages"].pop(s, None)


# -- the stages (TRL) ------------------------------------------------------------------------------------


def _run_stage(stage: str, source: Path, out: Path, config: PosttrainConfig, dev, progress: Progress) -> dict:
    """Train one stage from `source` with its TRL trainer; its checkpoints land in OUT. Returns the last log."""
    import warnings

    try:
        import trl  # noqa: F401
    except ImportError:
        raise InputError("geowh posttrain needs TRL: pip install 'geowh[posttrain]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging

    at = stage_steps(config.steps, config.checkpoints)
    common = {
        "output_dir": str(out / ".work" / stage), "max_steps": config.steps, "per_device_train_batch_size": config.batch_size,
        "learning_rate": config.lr or STAGE_LR[stage], "lr_scheduler_type": "constant", "seed": config.seed,
        "data_seed": config.seed, "save_strategy": "no", "report_to": "none", "logging_steps": 1,
        "disable_tqdm": True, "log_level": "error", "use_cpu": dev.type == "cpu", "dataloader_num_workers": 0,
    }
    from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    data_bars = is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the library is quiet: transformers', TRL's and datasets' bars and logs off
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TRL's and transformers' advice is for large runs, not the user
            tokenizer = AutoTokenizer.from_pretrained(source)
            if tokenizer.pad_token is None:  # batches need one; padding is masked out of every loss
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
            model.config.pad_token_id = tokenizer.pad_token_id
            if model.generation_config is not None:
                model.generation_config.pad_token_id = tokenizer.pad_token_id
            progress(Event("bar", "steps", done=0, total=config.steps))  # the stage: the info line before
            saver = type("Saver", (_Saver, TrainerCallback), {})(out, stage, at, model, tokenizer, config.steps, progress)
            trainer = TRAINERS[stage](model, tokenizer, out / TASK_DIR, config, common, [saver])
            for printer in (PrinterCallback, ProgressCallback):
                trainer.remove_callback(printer)
            trainer.train()
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if data_bars:
            enable_progress_bars()
    missing = [s for s in at if not (out / f"{stage}-step{s}" / "config.json").is_file()]
    if missing:  # a trainer that stopped early would leave a stage that looks finished
        raise InputError(f"{stage} stopped before step {missing[0]}: rerun to restart the stage")
    shutil.rmtree(out / ".work" / stage, ignore_errors=True)
    return saver.last


def _sft(model, tokenizer, tasks: Path, config: PosttrainConfig, common: dict, callbacks):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    items = read_task(tasks / f"{TRAIN_TASK}.jsonl")
    # Prompt-completion data: the loss is on the completion only; the trainer ends it with EOS.
    data = Dataset.from_list([{"prompt": i.prompt, "completion": " " + i.answer} for i in items])
    args = SFTConfig(**common, max_length=64, packing=False)
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=callbacks)


def _dpo(model, tokenizer, tasks: Path, config: PosttrainConfig, common: dict, callbacks):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in (tasks / f"{PAIRS}.jsonl").read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": r["prompt"], "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]}
                              for r in rows])
    args = DPOConfig(**common, beta=config.beta, max_length=64)
    # ref_model None: TRL keeps a frozen copy of the starting model (the SFT model) as the reference.
    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=callbacks)


def _rlvr(model, tokenizer, tasks: Path, config: PosttrainConfig, common: dict, callbacks):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    items = read_task(tasks / f"{TRAIN_TASK}.jsonl")
    data = Dataset.from_list([{"prompt": i.prompt, "answer": i.answer, "checker": i.checker, "item": i.id}
                              for i in items])
    args = GRPOConfig(**common, num_generations=config.generations, max_completion_length=config.max_new_tokens,
                      temperature=1.0)
    return GRPOTrainer(model=model, reward_funcs=verifiable_reward, args=args, train_dataset=data,
                       processing_class=tokenizer, callbacks=callbacks)


def verifiable_reward(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str],
                      checker: Sequence[str], item: Sequence[str], **_) -> list[float | None]:
    """RLVR's reward: 1 when the item's checker accepts the completion, else 0 — `TaskItem.correct`,
    the definition the generation measurement grades with."""
    # list[float | None]: TRL's reward type, where None means "no reward for this sample"; every one gets one here.
    return [float(TaskItem(i, p, a, c).correct(done))
            for p, done, a, c, i in zip(prompts, completions, answer, checker, item)]


TRAINERS: dict[str, Callable[..., Any]] = {"sft": _sft, "dpo": _dpo, "rlvr": _rlvr}
"""Stage → builder of its TRL trainer (model, tokenizer, task folder, config, TrainingArguments kwargs, callbacks)."""


class _Saver:
    """Reports each step and saves the schedule's checkpoints, each atomically: mixed into transformers'
    TrainerCallback when a stage runs (`_run_stage`), so that importing this module loads no transformers."""

    def __init__(self, out: Path, stage: str, at: Sequence[int], model, tokenizer, total: int, progress: Progress):
        self.out, self.stage, self.at, self.model, self.tokenizer = out, stage, set(at), model, tokenizer
        self.total, self.progress = total, progress
        self.last: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:  # a step's log, not the summary train() logs at its end
            self.last = {k: round(float(v), 5) for k, v in logs.items() if isinstance(v, int | float)}

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        self.progress(Event("bar", "steps", done=step, total=self.total,
                            data={"loss": float(self.last.get("loss", math.nan)),
                                  "lr": float(self.last.get("learning_rate", math.nan))}))
        if step in self.at:
            name = f"{self.stage}-step{step}"
            partial = self.out / ".partial" / name
            shutil.rmtree(partial, ignore_errors=True)
            self.model.save_pretrained(partial)
            self.tokenizer.save_pretrained(partial)
            write_json(partial / "posttrain_log.json", {"stage": self.stage, "step": step, **self.last})
            final = self.out / name
            if final.exists():
                shutil.rmtree(final)
            partial.replace(final)


# -- the data ------------------------------------------------------------------------------------------


def derive_tasks(out: Path, config: PosttrainConfig, progress: Progress = silent) -> dict:
    """OUT/tasks/: the in-distribution task (train and held-out items), the OOD task and DPO's pairs.

    Derived from the corpus, seeded, written once (reused when OUT/tasks/tasks.json exists):

    - `copy-train.jsonl` / `copy.jsonl`: `Copy: w1 w2 =>` → `w1 w2`, two frequent corpus words
      (checker exact); the held-out pairs never occur in training. SFT, DPO and RLVR train on the
      first; `copy` is the in-distribution evaluation and RLVR's reward task.
    - `phrase.jsonl`: the first two words of a frequent corpus phrase → its next word (checker word):
      what pretraining taught and no stage trains, the out-of-distribution task.
    - `copy-pairs.jsonl`: one DPO pair per training item: chosen the answer, rejected made from it by
      `rejected_by` = swap (the two words swapped), drop (the second word left out) or replace (the
      second word replaced by another corpus word), in turn.
    """
    folder = out / TASK_DIR
    manifest = folder / "tasks.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    from geowh.repro.corpus import load_corpus

    progress(Event("status", "deriving the tasks from the corpus"))
    corpus = load_corpus(config.corpus or None)
    words, phrases = corpus_statistics(corpus.texts)
    if len(words) < 20:
        raise InputError(f"the corpus {corpus.name} has only {len(words)} distinct frequent words: give more text")
    rng = random.Random(config.seed)
    pairs = sorted({(a, b) for a in words for b in words if a != b})
    rng.shuffle(pairs)
    held_out, train = pairs[: config.eval_items], pairs[config.eval_items: config.eval_items + config.train_items]
    copy = lambda i, a, b, part: {"id": f"{part}{i}", "prompt": f"Copy: {a} {b} =>", "answer": f"{a} {b}",  # noqa: E731
                                  "checker": REWARD_CHECKER}
    dpo = []
    for i, (a, b) in enumerate(train):
        how = REJECTIONS[i % len(REJECTIONS)]
        other = rng.choice([w for w in words[:50] if w not in (a, b)])
        rejected = {"swap": f"{b} {a}", "drop": a, "replace": f"{a} {other}"}[how]
        dpo.append({"id": f"train{i}", "prompt": f"Copy: {a} {b} =>", "chosen": f"{a} {b}", "rejected": rejected,
                    "rejected_by": how})
    ood = [{"id": f"phrase{i}", "prompt": f"{a} {b}", "answer": c, "checker": "word"}
           for i, ((a, b), c) in enumerate(phrases[: config.eval_items])]
    if len(ood) < min(10, config.eval_items):  # a handful of items is no evaluation
        raise InputError(f"the corpus {corpus.name} has only {len(ood)} frequent phrases: give more text")
    files = {TRAIN_TASK: [copy(i, a, b, "train") for i, (a, b) in enumerate(train)],
             IN_TASK: [copy(i, a, b, "heldout") for i, (a, b) in enumerate(held_out)], OOD_TASK: ood, PAIRS: dpo}
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        write_text(folder / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    described = {
        "corpus": corpus.describe() | {"sources": None},
        "vocabulary": len(words),
        "in_distribution": {"task": IN_TASK, "file": f"{TASK_DIR}/{IN_TASK}.jsonl", "items": len(held_out),
                            "train_file": f"{TASK_DIR}/{TRAIN_TASK}.jsonl", "train_items": len(train),
                            "checker": REWARD_CHECKER, "what": "Copy: w1 w2 => w1 w2 (held-out word pairs)"},
        "out_of_distribution": {"task": OOD_TASK, "file": f"{TASK_DIR}/{OOD_TASK}.jsonl", "items": len(ood),
                                "checker": "word", "what": "w1 w2 → the next word of a frequent corpus phrase"},
        "preferences": {"file": f"{TASK_DIR}/{PAIRS}.jsonl", "pairs": len(dpo), "rejected_by": list(REJECTIONS)},
        "reward": {"task": IN_TASK, "checker": REWARD_CHECKER, "train_file": f"{TASK_DIR}/{TRAIN_TASK}.jsonl",
                   "what": "TaskItem.correct: 1 when the completion's first line equals the answer, else 0"},
    }
    write_json(manifest, described)  # last: its presence means the task files are complete
    return described


def corpus_statistics(texts: Sequence[str]) -> tuple[list[str], list[tuple[tuple[str, str], str]]]:
    """The corpus's frequent words (most frequent first) and its determined phrases: word pairs seen
    PHRASE_MIN_COUNT times or more, followed by one word PHRASE_MIN_SHARE of the time or more."""
    counts: Counter[str] = Counter()
    follow: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    read = 0
    for text in texts:
        tokens = text.split()
        counts.update(t for t in tokens if WORD.match(t))
        for a, b, c in zip(tokens, tokens[1:], tokens[2:]):
            if WORD.match(a) and WORD.match(b) and WORD.match(c):
                follow[(a, b)][c] += 1
        read += len(text)
        if read > PHRASE_CHARS:
            break
    words = [w for w, _ in counts.most_common(VOCABULARY)]
    phrases = []
    for pair, nexts in follow.items():
        total = sum(nexts.values())
        word, n = nexts.most_common(1)[0]
        if total >= PHRASE_MIN_COUNT and n >= PHRASE_MIN_SHARE * total:
            phrases.append((total, pair, word))
    phrases.sort(key=lambda p: (-p[0], p[1]))
    return words, [(pair, word) for _, pair, word in phrases]


