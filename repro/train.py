"""Train a small Pythia-architecture model from scratch: a checkpoint series made offline.

`train_mini(OUT)` trains a GPT-NeoX (the architecture of Pythia) on a real English corpus
(`geowh.repro.corpus`) and saves Hugging Face checkpoints with their tokenizer on a
Pythia-like schedule, step 0, half powers of two, then evenly spaced, as `OUT/step{N}/`, so
that `geowh ingest OUT --probe OUT/probe.txt` reads it as an ordinary local series.

OUT holds everything the run needs to be resumed or inspected:

    OUT/train_config.json   the configuration, the corpus and the plan (total steps, schedule)
    OUT/probe.txt           held-out documents (never trained on), one per line: the probe
    OUT/tokenizer/          the tokenizer (trained on the training documents, or the given one)
    OUT/tokens.npy          the training documents as one token stream, EOS between documents
    OUT/state.pt            model and optimizer at the last checkpoint, for resuming
    OUT/train_log.jsonl     train loss, held-out loss, learning rate, time, RankMe and αReQ at each checkpoint
    OUT/step0/, step1/, …   the checkpoints (config.json, model.safetensors, tokenizer files)

A wall-clock budget (`minutes`) is turned into a step count before training starts, from the
measured time of a few steps, so the cosine decay ends on time; `steps` fixes it instead.
Running again on the same OUT continues an interrupted run (same options) or, when it has
finished, returns it unchanged.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from geowh.errors import InputError
from geowh.outputs import write_json, write_text
from geowh.progress import Event, Progress, silent
from geowh.warehouse.names import local_step

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


class Vocabulary(Protocol):
    """What `build_model` reads from a tokenizer: its size and special ids."""

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    def __len__(self) -> int: ...


EOS = "<|endoftext|>"
CONFIG_FILE = "train_config.json"
# Seconds of timed steps (at most CALIBRATION_STEPS) that decide the step count of a budget.
CALIBRATION_SECONDS = 4.0
CALIBRATION_STEPS = 8
# Batches of the timing steps are drawn from seeds no real step uses.
CALIBRATION_SEED = 10**12
# Windows of held-out text whose loss is logged at each checkpoint.
EVAL_WINDOWS = 32
# Documents the tokenizer is trained on, at most: BPE merges settle long before 28 MB.
TOKENIZER_SAMPLE_BYTES = 8_000_000
# Probe sequences of the live RankMe/αReQ at each checkpoint: `geowh ingest OUT --probe
# OUT/probe.txt --n 256 --max-len SEQ_LEN` gives the same values.
LIVE_PROBE_N = 256


@dataclass(frozen=True)
class TrainConfig:
    """What defines a run: two runs with equal configs are the same run (budgets aside)."""

    layers: int = 4
    d_model: int = 128
    heads: int | None = None
    """Attention heads (default: heads of 32 dimensions, half Pythia's 64, which suits small d)."""
    vocab: int = 8000
    """Size of the BPE trained on the corpus; ignored when `tokenizer` is given."""
    tokenizer: str | None = None
    """A tokenizer to use instead (folder or hub id), e.g. Pythia's 50k gpt-neox-20b."""
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    """The cosine decays to lr × min_lr_ratio (Pythia: 0.1)."""
    warmup: float = 0.01
    """Fraction of the steps spent warming the learning rate up linearly (Pythia: 1%)."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    corpus: tuple[str, ...] = ()
    """Training text files (.txt/.jsonl/.parquet); empty: the default corpus of Python docs."""
    corpus_mb: float = 64.0
    """Size limit of the default corpus."""
    probe_docs: int = 1000
    """Held-out documents written to OUT/probe.txt."""
    checkpoints: int = 20
    """Evenly spaced checkpoints after the log-spaced ones."""

    def __post_init__(self):
        for name in ("layers", "d_model", "batch_size", "seq_len", "probe_docs", "checkpoints"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.tokenizer is None and self.vocab < 300:
            raise InputError("--vocab must be at least 300 (256 bytes, the end-of-text token and some merges)")
        if self.d_model % self.n_heads:
            raise InputError(f"--d-model {self.d_model} is not divisible by {self.n_heads} heads")
        if not (self.lr > 0 and 0 <= self.warmup < 1 and 0 <= self.min_lr_ratio <= 1):
            raise InputError("--lr must be positive, warmup a fraction in [0, 1), min-lr-ratio in [0, 1]")

    @property
    def n_heads(self) -> int:
        if self.heads:
            return self.heads
        # Heads of 32 dimensions, or the nearest count below that divides d_model.
        return next(h for h in range(max(1, self.d_model // 32), 0, -1) if self.d_model % h == 0)

    def to_dict(self) -> dict:
        return asdict(self) | {"corpus": list(self.corpus)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**(d | {"corpus": tuple(d.get("corpus") or ())}))


@dataclass
class TrainSummary:
    """What `train_mini` did: `geowh train-mini --json` prints `to_dict()`."""

    out: str
    status: str
    """trained (a new run), resumed (continued an interrupted one) or reused (already finished)."""
    steps: int
    checkpoints: list[str]
    seconds: float
    """Wall-clock seconds of this call."""
    tokens: int
    """Training tokens seen by the last step (steps × batch × sequence length)."""
    train_loss: float | None
    eval_loss: float | None
    device: str
    parameters: int
    probe: str
    config: dict = field(default_factory=dict)
    corpus: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# -- the plan ----------------------------------------------------------------------------------


def checkpoint_steps(total: int, evenly: int = 20) -> list[int]:
    """Pythia's schedule scaled to `total` steps: 0, half powers of two, then `evenly` even steps.

    Pythia saves 0, 1, 2, 4 … 512, then every 1,000 of 143,000 steps. Here the even spacing is
    total / evenly, and below it the log-spaced steps are half powers (1, 2, 3, 4, 6, 8, 11,
    16, 23, 32, 45, 64, …) to resolve the warmup collapse on short runs.
    """
    if total < 0 or evenly < 1:
        raise InputError("the step count must be at least 0 and the checkpoint count at least 1")
    every = max(1, math.ceil(total / evenly))
    early = {round(2 ** (k / 2)) for k in range(0, 2 * max(1, every).bit_length() + 1)}
    steps = {0, total} | {s for s in early if s < every} | set(range(every, total + 1, every))
    return sorted(s for s in steps if s <= total)


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Learning rate of update `step` (1 … total): linear warmup, then cosine to lr × min_lr_ratio."""
    warm = max(1, round(config.warmup * total)) if config.warmup > 0 else 0
    if step <= warm:
        return config.lr * step / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def plan_steps(seconds_left: float, step_seconds: float, save_seconds: float, evenly: int) -> int:
    """The most steps (at least 1) whose training and checkpoint saving fit in `seconds_left`."""
    total = max(1, int(seconds_left / step_seconds))
    for _ in range(4):  # the checkpoint count depends on the total: settle it by iteration
        saves = len(checkpoint_steps(total, evenly)) * save_seconds
        total = max(1, int((seconds_left - saves) / step_seconds))
    return total


# -- the run -----------------------------------------------------------------------------------


def train_mini(
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    minutes: float | None = None,
    steps: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: Progress = silent,
) -> TrainSummary:
    """Train (or resume, or reuse) a mini Pythia in `out`; the budget is `steps` or else `minutes` (default 10).

    The budget covers the whole call, data preparation included (the first build of the
    default corpus takes a minute or more of it). Data, tokenizer and model initialisation
    are seeded: the same config gives the same run, up to floating-point nondeterminism.
    `dtype` is the precision of the forward pass (`autocast_dtype`: auto = bf16 autocast on a
    capable GPU or CPU, float32, bfloat16); it is fixed in the plan when the run starts, so a
    resumed run keeps it.
    `progress` hears what it does (info and status lines, a `bar` of "steps" whose data is each
    step's loss and lr, then each checkpoint's log row: geowh/progress.py); by default nothing.

    Example:
        summary = train_mini("runs/mini", TrainConfig(layers=2, d_model=64), minutes=2)
        summary.checkpoints   # ['step0', 'step1', 'step2', …]
    """
    from geowh.allocator import reuse_freed_memory
    from geowh.ingest.sources.models import device_name, resolve_device

    reuse_freed_memory()  # 2-3x the CPU steps/s: the head's logits no longer re-fault every step
    started = time.monotonic()
    config = config or TrainConfig()
    out = Path(out).expanduser()
    if steps is not None and steps < 1:
        raise InputError("--steps must be at least 1")
    if minutes is not None and minutes <= 0:
        raise InputError("--minutes must be positive")
    dev = resolve_device(device)
    amp = autocast_dtype(dtype, dev)

    saved = _load_saved(out, config, steps)
    if saved and saved.get("finished"):
        return _summary(out, saved, "reused", time.monotonic() - started, device_name(dev))

    if saved is None:
        out.mkdir(parents=True, exist_ok=True)
        data = _prepare_data(out, config, progress)
        saved = {"config": config.to_dict(), "corpus": data, "plan": None, "finished": False}
        write_json(out / CONFIG_FILE, saved)
    tokenizer = _load_tokenizer(out / "tokenizer")
    import numpy as np

    tokens = np.load(out / "tokens.npy", mmap_mode="r")
    if len(tokens) < config.seq_len + 2:
        raise InputError(f"the corpus holds only {len(tokens)} tokens: give more text or a shorter --seq-len")
    eval_batch = _eval_batch(out / "probe.txt", tokenizer, config)
    probe = _live_probe(out, tokenizer, config, progress)

    model, optimizer, start = _model_and_optimizer(out, config, tokenizer, dev)
    if saved["plan"] is not None:
        amp = saved["plan"].get("dtype", amp)  # the dtype the run started with
    status = "resumed" if start > 0 else "trained"
    if start == 0 and not (out / "step0" / "config.json").is_file():
        t = time.monotonic()
        row = _log_row(0, None, model, eval_batch, 0, config, started, amp) | _geometry(probe, model, 0, config)
        _save_checkpoint(out, 0, model, tokenizer, optimizer, log_row=row)
        save_seconds = time.monotonic() - t
    else:
        save_seconds = 0.5

    plan = saved["plan"]
    if plan is None:
        if steps is not None:
            total, step_seconds = steps, None
        else:
            step_seconds = _calibrate(model, optimizer, tokens, config, dev, progress, amp)
            budget = 60 * (minutes if minutes is not None else 10.0)
            total = plan_steps(budget - (time.monotonic() - started), step_seconds, save_seconds, config.checkpoints)
        plan = {
            "total_steps": total,
            "minutes": minutes if steps is None else None,
            "step_seconds": round(step_seconds, 4) if step_seconds else None,
            "checkpoint_steps": checkpoint_steps(total, config.checkpoints),
            "tokens_per_step": config.batch_size * config.seq_len,
            "device": device_name(dev),
            "dtype": amp,
            "parameters": _parameters(model),
        }
        saved["plan"] = plan
        write_json(out / CONFIG_FILE, saved)
    total = plan["total_steps"]
    save_at = set(plan["checkpoint_steps"])

    progress(Event("info", f"training {_parameters(model):,} parameters on {device_name(dev)} ({amp}): "
                           f"steps {start + 1}…{total}, {len(save_at)} checkpoints → {out}"))
    losses: list[float] = []
    progress(Event("bar", "steps", done=start, total=total))
    for step in range(start + 1, total + 1):
        lr = lr_at(step, total, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = _train_step(model, optimizer, _batch(tokens, step, config), config, dev, amp)
        losses.append(loss)
        progress(Event("bar", "steps", done=step, total=total, data={"loss": loss, "lr": lr}))
        if step in save_at:
            row = _log_row(step, sum(losses) / len(losses), model, eval_batch, lr, config, started, amp)
            row |= _geometry(probe, model, step, config)
            progress(Event("bar", "steps", done=step, total=total, data=row))  # its RankMe and αReQ, if measured
            _save_checkpoint(out, step, model, tokenizer, optimizer, log_row=row)
            losses = []

    saved["finished"] = True
    write_json(out / CONFIG_FILE, saved)
    return _summary(out, saved, status, time.monotonic() - started, device_name(dev))


# -- data ----------------------------------------------------------------------------------------


def _prepare_data(out: Path, config: TrainConfig, progress: Progress) -> dict:
    """Corpus → held-out OUT/probe.txt, OUT/tokenizer/ and OUT/tokens.npy; returns the corpus description."""
    import numpy as np

    from geowh.repro.corpus import load_corpus

    progress(Event("status", "reading the corpus (the first build of the default one takes a few minutes)"))
    corpus = load_corpus(config.corpus, max_mb=config.corpus_mb, progress=progress)
    train_docs, probe_docs = split_documents(corpus.texts, config.probe_docs, config.seed)
    progress(Event("info", f"corpus {corpus.name}: {len(corpus.texts):,} documents, {corpus.bytes / 1e6:.1f} MB; "
                           f"{len(probe_docs):,} held out → probe.txt"))
    write_text(out / "probe.txt", "".join(d + "\n" for d in probe_docs))

    progress(Event("status", "training the tokenizer" if config.tokenizer is None else f"loading tokenizer {config.tokenizer}"))
    tokenizer = build_tokenizer(train_docs, config)
    tokenizer.save_pretrained(out / "tokenizer")
    progress(Event("status", f"tokenizing {len(train_docs):,} documents"))
    ids = encode_documents(tokenizer, train_docs)
    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.uint32
    partial = out / "tokens.partial.npy"
    np.save(partial, ids.astype(dtype))
    partial.replace(out / "tokens.npy")
    progress(Event("info", f"{len(ids):,} training tokens, vocabulary {len(tokenizer):,}"))
    return corpus.describe() | {
        "train_documents": len(train_docs), "probe_documents": len(probe_docs), "train_tokens": len(ids),
    }


def split_documents(texts: Sequence[str], probe_docs: int, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) documents: `probe_docs` long documents drawn by a seeded generator.

    Held-out documents are drawn among those of at least 256 characters, so that most give a
    full 128-token probe sequence; at most a tenth of the corpus is held out.
    """
    import numpy as np

    if len(texts) < 10:
        raise InputError(f"the corpus has {len(texts)} documents: give at least 10 (one per line in a .txt file)")
    long = [i for i, t in enumerate(texts) if len(t) >= 256] or list(range(len(texts)))
    count = min(probe_docs, len(texts) // 10, len(long))
    picked = set(np.random.default_rng(seed).choice(long, size=count, replace=False).tolist()) if count else set()
    train = [t for i, t in enumerate(texts) if i not in picked]
    probe = [t for i, t in enumerate(texts) if i in picked]
    return train, probe


def build_tokenizer(texts: Sequence[str], config: TrainConfig) -> PreTrainedTokenizerBase:
    """The given tokenizer, or a byte-level BPE of `config.vocab` tokens trained on `texts`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if config.tokenizer is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        except Exception as e:  # hub, file and parsing errors come in many types
            raise InputError(f"--tokenizer {config.tokenizer}: cannot load it ({e}); give a folder or hub id") from None
        if tokenizer.eos_token_id is None:
            raise InputError(f"--tokenizer {config.tokenizer} has no end-of-text token to separate documents")
        return tokenizer

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2, show_progress=False,
    )
    bpe.train_from_iterator(_sample(texts, TOKENIZER_SAMPLE_BYTES), trainer=trainer)
    # Pythia's convention: one <|endoftext|> token for BOS, EOS and UNK, no pad token.
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=2048,
    )


def _sample(texts, limit: int) -> list[str]:
    """Every k-th document, k chosen so about `limit` bytes are kept (the whole list if smaller)."""
    size = sum(len(t) for t in texts)
    stride = max(1, math.ceil(size / limit))
    return list(texts[::stride])


def encode_documents(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], chunk: int = 2048):
    """One token stream (int64 array): each document's ids followed by EOS."""
    import numpy as np

    eos = tokenizer.eos_token_id
    # The fast backend directly: no "longer than model_max_length" warning for long documents.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = []
    for i in range(0, len(texts), chunk):
        part = list(texts[i : i + chunk])
        if backend is not None:
            docs = [e.ids for e in backend.encode_batch(part, add_special_tokens=False)]
        else:
            docs = tokenizer(part, add_special_tokens=False)["input_ids"]
        parts.append(np.fromiter((t for doc in docs for t in (*doc, eos)), dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _batch(tokens, step: int, config: TrainConfig):
    """The (batch, seq_len + 1) windows of update `step`: seeded by (seed, step), so a resumed run sees the same data."""
    import numpy as np

    rng = np.random.default_rng([config.seed, step])
    starts = rng.integers(0, len(tokens) - config.seq_len - 1, size=config.batch_size)
    return np.stack([np.asarray(tokens[s : s + config.seq_len + 1], dtype=np.int64) for s in starts])


def _eval_batch(probe_file: Path, tokenizer, config: TrainConfig):
    """Fixed held-out windows (at most EVAL_WINDOWS) for the loss logged at each checkpoint."""

    docs = probe_file.read_text(encoding="utf-8").splitlines()
    ids = encode_documents(tokenizer, docs[: 4 * EVAL_WINDOWS])
    width = config.seq_len + 1
    count = min(EVAL_WINDOWS, len(ids) // width)
    return ids[: count * width].reshape(count, width) if count else None


# -- model and steps -------------------------------------------------------------------------------


def build_model(config: TrainConfig, tokenizer: Vocabulary):
    """A freshly initialised GPT-NeoX with Pythia's choices (parallel residual, 25% rotary, untied head)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(config.seed)
    model_config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.d_model,
        num_hidden_layers=config.layers,
        num_attention_heads=config.n_heads,
        intermediate_size=4 * config.d_model,
        max_position_embeddings=max(2048, config.seq_len),
        # transformers 5 takes it as a legacy keyword (read into rope_parameters) its dataclass signature omits
        rotary_pct=0.25,  # type: ignore[call-arg]
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPTNeoXForCausalLM(model_config)


def _optimizer(model, config: TrainConfig):
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases and norms
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def _model_and_optimizer(out: Path, config: TrainConfig, tokenizer, dev):
    """A new model and optimizer, or those of OUT/state.pt (with the step it holds)."""
    import torch

    model = build_model(config, tokenizer)
    optimizer = _optimizer(model, config)
    start = 0
    state_file = out / "state.pt"
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    model.to(dev)
    for s in optimizer.state.values():  # optimizer moments follow the model to the device
        for k, v in s.items():
            if torch.is_tensor(v) and k != "step":
                s[k] = v.to(dev)
    model.train()
    return model, optimizer, start


TRAIN_DTYPES = ("auto", "float32", "bfloat16")


def autocast_dtype(dtype: str, dev: torch.device) -> str:
    """train-mini's `--dtype` resolved for `dev`: `bfloat16` (autocast) or `float32`.

    `auto` is bf16 autocast where `--dtype auto` of an ingest picks bf16: a GPU that supports
    it, or a CPU with native bf16 matrix units (`cpu_native_bf16`); the weights, the optimizer
    and the loss stay fp32 either way.
    """
    from geowh.ingest.sources.models import resolve_dtype

    if dtype not in TRAIN_DTYPES:
        raise InputError(f"--dtype {dtype}: use one of {', '.join(TRAIN_DTYPES)}")
    return str(resolve_dtype(dtype, dev)).removeprefix("torch.")


def _autocast(dev, amp: str):
    import torch

    if amp == "auto":
        amp = autocast_dtype("auto", dev)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp == "bfloat16")


def _train_step(model, optimizer, batch, config: TrainConfig, dev, amp: str = "auto") -> float:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(batch).to(dev)
    with _autocast(dev, amp):
        logits = model(input_ids=x[:, :-1]).logits  # (batch, seq, vocab)
    loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    value = loss.item()
    if not math.isfinite(value):
        raise InputError(f"the loss became {value}: lower --lr (now {config.lr})")
    return value


def _eval_loss(model, batch, dev, amp: str = "auto") -> float | None:
    import torch
    import torch.nn.functional as F

    if batch is None:
        return None
    model.eval()
    with torch.no_grad(), _autocast(dev, amp):
        x = torch.from_numpy(batch).to(dev)
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).item()
    model.train()
    return loss


def _calibrate(model, optimizer, tokens, config: TrainConfig, dev, progress: Progress, amp: str = "auto") -> float:
    """Seconds per step, timed on throwaway copies of the model and optimizer."""
    import torch

    progress(Event("status", "timing a few steps to plan the schedule"))
    trial_model = copy.deepcopy(model)
    trial_opt = _optimizer(trial_model, config)
    _train_step(trial_model, trial_opt, _batch(tokens, CALIBRATION_SEED, config), config, dev, amp)  # allocations
    times: list[float] = []
    while len(times) < CALIBRATION_STEPS and sum(times) < CALIBRATION_SECONDS:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.monotonic()
        _train_step(trial_model, trial_opt, _batch(tokens, CALIBRATION_SEED + 1 + len(times), config), config, dev, amp)
        times.append(time.monotonic() - t)
    del trial_model, trial_opt
    return sorted(times)[len(times) // 2] * 1.05  # median, with a margin for evaluation and logging


def _log_row(step: int, train_loss, model, eval_batch, lr: float, config: TrainConfig, started: float,
             amp: str = "auto") -> dict:
    return {
        "step": step,
        "tokens": step * config.batch_size * config.seq_len,
        "train_loss": round(train_loss, 5) if train_loss is not None else None,
        "eval_loss": _round(_eval_loss(model, eval_batch, next(model.parameters()).device, amp)),
        "lr": lr,
        "seconds": round(time.monotonic() - started, 2),
    }


def _live_probe(out: Path, tokenizer, config: TrainConfig, progress: Progress):
    """The held-out probe, tokenized once, for RankMe and αReQ at each checkpoint (None when no text is long enough)."""
    from geowh.integrations import GeometryProbe

    try:
        return GeometryProbe(tokenizer, out / "probe.txt", name=out.name, n=LIVE_PROBE_N, max_len=config.seq_len)
    except InputError as e:
        progress(Event("info", f"no live RankMe/αReQ: {e}"))
        return None


def _geometry(probe, model, step: int, config: TrainConfig) -> dict:
    """RankMe and αReQ of the model on the probe (eval mode, random state untouched), for the log row."""
    if probe is None:
        return {}
    values = probe.measure(model, step, tokens=step * config.batch_size * config.seq_len)
    return {"rankme": values["rankme"], "alpha_req": values["alpha_req"]}


def _save_checkpoint(out: Path, step: int, model, tokenizer, optimizer, *, log_row: dict) -> None:
    """OUT/step{N}/ (model + tokenizer), then the resume state and the log line, each written atomically."""
    import torch

    partial = out / ".partial" / f"step{step}"
    if partial.exists():
        shutil.rmtree(partial)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "writing shards" bar per checkpoint would bury ours
    try:
        model.save_pretrained(partial)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(partial)
    final = out / f"step{step}"
    if final.exists():  # a step redone after a crash between checkpoint and state
        shutil.rmtree(final)
    partial.replace(final)
    state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    torch.save(state, out / "state.partial.pt")
    (out / "state.partial.pt").replace(out / "state.pt")
    with open(out / "train_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(log_row) + "\n")


# -- resuming --------------------------------------------------------------------------------------


def _load_saved(out: Path, config: TrainConfig, steps: int | None) -> dict | None:
    """The run already in OUT (None when there is none); an error when it is a different run."""
    path = out / CONFIG_FILE
    if not path.is_file():
        if out.is_dir() and any(p.is_dir() and (p / "config.json").is_file() for p in out.iterdir()):
            raise InputError(f"{out} holds checkpoints that train-mini did not write: choose an empty or new folder")
        return None
    saved = json.loads(path.read_text())
    old = TrainConfig.from_dict(saved["config"]).to_dict()
    new = config.to_dict()
    changed = [f"{k} {old[k]!r} → {new[k]!r}" for k in new if old.get(k) != new[k]]
    if changed:
        raise InputError(
            f"{out} holds a train-mini run with other settings ({'; '.join(changed)}): "
            "rerun with the same options to resume it, or choose a new folder"
        )
    plan = saved.get("plan")
    if plan and steps is not None and steps != plan["total_steps"]:
        raise InputError(
            f"{out} holds a run planned for {plan['total_steps']} steps, not {steps}: "
            "a cosine schedule cannot be stretched; choose a new folder"
        )
    if not (out / "tokens.npy").is_file() or not (out / "tokenizer").is_dir():
        return None  # data preparation was interrupted: redo it
    return saved


def _summary(out: Path, saved: dict, status: str, seconds: float, device: str) -> TrainSummary:
    rows = _read_log(out)
    last = rows[-1] if rows else {}
    config = saved["config"]
    steps = {p.name: step for p in out.iterdir() if p.is_dir() and (step := local_step(p.name)) is not None}
    names = sorted(steps, key=steps.__getitem__)
    return TrainSummary(
        out=str(out), status=status, steps=int(last.get("step", 0)), checkpoints=names, seconds=round(seconds, 2),
        tokens=int(last.get("tokens", 0)), train_loss=last.get("train_loss"), eval_loss=last.get("eval_loss"),
        device=device, parameters=saved["plan"]["parameters"], probe=str(out / "probe.txt"), config=config | {"plan": saved["plan"]},
        corpus=saved["corpus"],
    )


def _read_log(out: Path) -> list[dict]:
    path = out / "train_log.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["step"]] = row  # a step redone after a crash: the last line wins
    return [rows[s] for s in sorted(rows)]


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _round(x: float | None) -> float | None:
    return round(x, 5) if x is not None else None


