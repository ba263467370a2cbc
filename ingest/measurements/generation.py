"""The generation measurement: what a checkpoint *does* on a task, stored beside its geometry.

`geowh ingest RUN --generate TASK.jsonl[,TASK2.jsonl] [--samples 16] [--k 1,4,16] [--temperature 1.0]
[--max-new-tokens 32]`. For each task file (geowh/checkers.py: `prompt`, `answer`, a checker) and
checkpoint:

- `accuracy`: greedy decoding, graded by the item's checker; stderr binomial;
- `pass@K` for each K: the unbiased estimator of Chen et al. 2021 from `samples` samples per item,
  averaged over items; stderr over items;
- `distinct-1`, `distinct-2`: distinct word n-grams over an item's samples, averaged over items;
- `entropy`: the entropy (nats) of the sampling distribution (softmax of logits / temperature) at
  each sampled token, averaged over every sampled token of the task.

They are `evals` rows (task = the file's name without extension, source `geowh`, the settings in
`params`), so `correlate --y eval:TASK/pass@1`, `plot --eval TASK/pass@1` and SQL read them as
imported evals; the per-item counts (n, c, greedy correct) go to `generation_items`, from which
`geowh.queries.generation.pass_at_k_table` recomputes pass@k for any k.

Decoding runs through `model.generate` (KV cache, left padding with its attention mask), in
batches of similar-length prompts. Sampling is seeded per (seed, task, item, sample): each row of a
batch draws its Gumbel noise from its own generator, so a sample does not depend on the batch it
ran in, on the batch size, on the process (Ray) or on the device. Prompts are raw text (no chat
template); a completion ends at the EOS token or after `max_new_tokens`, and checkers grade its
first line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geowh.checkers import TaskItem, read_task
from geowh.errors import CheckpointError, InputError
from geowh.ingest.engine.plan import Measurement, Rows
from geowh.ingest.measurements import Option

NAME = "generation"
OPTIONS = (
    Option("generate", "--generate",
           "Also measure generation on task files TASK.jsonl[,TASK2.jsonl]: accuracy, pass@k, distinct-n, entropy."),
    Option("samples", "--samples", "Samples per item for --generate's pass@k, distinct-n and entropy (default 16).", int),
    Option("k", "--k", "pass@k for these k, each at most --samples (default 1,4,16).", str),
    Option("temperature", "--temperature", "Sampling temperature of --generate (default 1.0).", float),
    Option("max_new_tokens", "--max-new-tokens", "Tokens generated per completion by --generate (default 32).", int),
)
VERSION = 1
"""Of the definitions above: part of the config key, so a changed definition is measured again."""
BATCH_SIZE = 32
"""Rows (prompts, or prompt × sample) per `generate` call when `--batch-size` is not given."""


@dataclass(frozen=True)
class GenerateConfig:
    """Every setting of the generation measurement; its defaults are `--generate`'s."""

    tasks: tuple[str, ...]
    """Task files (.jsonl, geowh/checkers.py's format)."""
    samples: int = 16
    k: tuple[int, ...] = (1, 4, 16)
    temperature: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise InputError("--generate names no task file: give TASK.jsonl[,TASK2.jsonl]")
        for option, value in (("--samples", self.samples), ("--max-new-tokens", self.max_new_tokens),
                              ("--batch-size", self.batch_size), ("--seed", self.seed)):
            least = 0 if option == "--seed" else 1
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise InputError(f"{option} {value}: give a whole number of at least {least}")
        if not self.k or any(not isinstance(k, int) or not 1 <= k <= self.samples for k in self.k):
            raise InputError(f"--k {','.join(map(str, self.k))}: each k must be between 1 and --samples {self.samples}")
        if not self.temperature > 0:
            raise InputError(f"--temperature {self.temperature}: give a temperature above 0")
        names = [task_name(t) for t in self.tasks]
        if len(set(names)) < len(names):
            raise InputError(f"--generate {','.join(self.tasks)}: two task files share a name; the task is the file's name")


def task_name(path: str | Path) -> str:
    """The `evals.task` of a task file: its name without extension."""
    return Path(path).stem


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise InputError(f"--k {text}: give whole numbers such as 1,4,16") from None


def build(config, options: Mapping[str, Any]) -> Generation | None:
    """`--generate TASKS [--samples N] [--k LIST] [--temperature T] [--max-new-tokens N]`; the seed is the ingest's `--seed`."""
    tasks = options.get("generate")
    others = [o.flag for o in OPTIONS[1:] if options.get(o.name) is not None]
    if tasks is None:
        if others:
            raise InputError(f"{others[0]} sets up --generate: give --generate TASK.jsonl too")
        return None
    settings = {o.name: options[o.name] for o in OPTIONS[1:] if options.get(o.name) is not None}
    if "k" in settings:
        settings["k"] = parse_ks(settings["k"])
    elif "samples" in settings:  # the default ks that fit the samples given
        settings["k"] = tuple(k for k in GenerateConfig.k if k <= settings["samples"]) or (1,)
    paths = tuple(t.strip() for t in str(tasks).split(",") if t.strip())
    return Generation(GenerateConfig(paths, seed=config.seed, batch_size=config.batch_size, **settings))


class Generation(Measurement):
    """Greedy and sampled completions of every task item, graded by the item's checker.

    >>> gen = Generation(GenerateConfig(("tasks/arith.jsonl",), samples=8, k=(1, 8)))
    >>> rows = gen.score(loaded)   # {"evals": [...], "generation_items": [...]} of a loaded causal LM
    >>> ingest("./run", IngestConfig(probe="probe.txt"), measurements=[gen])   # beside the geometry

    Building it reads the task files (a malformed one fails here, before anything is written).
    """

    def __init__(self, settings: GenerateConfig):
        self.settings = settings
        self.tasks: dict[str, tuple[Path, list[TaskItem]]] = {}
        keyed = []
        for path in settings.tasks:
            items = read_task(path)
            self.tasks[task_name(path)] = (Path(path).resolve(), items)
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
            keyed.append({"task": task_name(path), "sha256": digest, "items": len(items)})
        s = settings
        config = {"tasks": keyed, "samples": s.samples, "k": list(s.k), "temperature": s.temperature,
                  "max_new_tokens": s.max_new_tokens, "seed": s.seed, "version": VERSION}
        super().__init__(NAME, None, config, with_head=True, probe=",".join(self.tasks))

    def measure(self, loaded, ref, config, meter) -> Rows:
        return self.score(loaded)

    def score(self, loaded) -> Rows:
        """The `evals` and `generation_items` rows of one loaded checkpoint (loaded `with_head`)."""
        import torch

        rows: Rows = {"evals": [], "generation_items": []}
        try:
            for task, (path, items) in self.tasks.items():
                task_rows = self._task_rows(loaded, task, path, items)
                for table, extra in task_rows.items():
                    rows[table].extend(extra)
        except torch.OutOfMemoryError as e:
            raise CheckpointError(
                f"out of memory generating with {loaded.ref.label}: give a smaller --batch-size"
            ) from e
        return rows

    def _task_rows(self, loaded, task: str, path: Path, items: list[TaskItem]) -> Rows:
        from geowh.queries.generation import accuracy, distinct_n, mean_and_stderr, pass_at_k_scores

        s = self.settings
        model, tokenizer = loaded.model, loaded.tokenizer
        prompts = [encode_prompt(tokenizer, item.prompt, model, s.max_new_tokens) for item in items]
        batch = s.batch_size or BATCH_SIZE
        greedy = generate(model, tokenizer, prompts, max_new_tokens=s.max_new_tokens, batch_size=batch)
        seeds = [sample_seed(s.seed, task, item.id, j) for item in items for j in range(s.samples)]
        sampled = generate(model, tokenizer, [p for p in prompts for _ in range(s.samples)],
                           max_new_tokens=s.max_new_tokens, batch_size=batch, temperature=s.temperature, seeds=seeds)
        ref = loaded.ref
        item_rows, counts, greedy_ok, d1, d2 = [], [], [], [], []
        entropy_sum, entropy_tokens = 0.0, 0
        for i, item in enumerate(items):
            mine = sampled[i * s.samples : (i + 1) * s.samples]
            ok, c = item_counts(item, greedy[i].text, [x.text for x in mine])
            tokens = sum(len(x.entropies) for x in mine)
            total = sum(sum(x.entropies) for x in mine)
            entropy_sum, entropy_tokens = entropy_sum + total, entropy_tokens + tokens
            counts.append((s.samples, c))
            greedy_ok.append(ok)
            d1.append(distinct_n([x.text for x in mine], 1))
            d2.append(distinct_n([x.text for x in mine], 2))
            item_rows.append({
                "model": ref.model, "checkpoint": ref.label, "task": task, "item": item.id,
                "samples": s.samples, "correct": c, "greedy_correct": ok, "greedy": greedy[i].text,
                "sampled_tokens": tokens, "entropy": total / tokens if tokens else None,
            })
        params = {"samples": s.samples, "temperature": s.temperature, "max_new_tokens": s.max_new_tokens,
                  "seed": s.seed, "items": len(items), "version": VERSION}
        scores: list[tuple[str, float | None, float | None, dict]] = [("accuracy", *accuracy(greedy_ok), {"decoding": "greedy"})]
        scores += [(f"pass@{k}", *pass_at_k_scores(counts, k), {"k": k}) for k in s.k]
        scores += [("distinct-1", *mean_and_stderr(d1), {"unit": "words"}),
                   ("distinct-2", *mean_and_stderr(d2), {"unit": "words"}),
                   ("entropy", entropy_sum / entropy_tokens if entropy_tokens else None, None,
                    {"unit": "nats/token", "tokens": entropy_tokens})]
        evals = [
            {"model": ref.model, "checkpoint": ref.label, "step": ref.step, "task": task, "metric": metric,
             "filter": "none", "num_fewshot": 0, "value": value, "stderr": stderr, "source": "geowh",
             "source_file": str(path), "params": params | extra}
            for metric, value, stderr, extra in scores
        ]
        return {"evals": evals, "generation_items": item_rows}


def item_counts(item: TaskItem, greedy: str, samples: Sequence[str]) -> tuple[bool, int]:
    """(greedy completion correct, correct samples) by the item's own checker."""
    return item.correct(greedy), sum(item.correct(x) for x in samples)


def sample_seed(seed: int, task: str, item: str, sample: int) -> int:
    """The seed of one sample: the same (seed, task, item, sample) draws the same noise anywhere."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{task}/{item}/{sample}".encode()).digest()[:8], "little") >> 1


def encode_prompt(tokenizer, prompt: str, model, max_new_tokens: int) -> list[int]:
    """The prompt's ids, its oldest tokens dropped when prompt + completion exceed the model's context."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    keep = max(limit - max_new_tokens, 1)
    return ids[-keep:] if ids else [tokenizer.eos_token_id]


@dataclass
class Completion:
    tokens: list[int]
    """Generated ids up to and including the EOS token (when one came)."""
    text: str
    """The decoded completion, EOS and other special tokens left out."""
    entropies: list[float]
    """Entropy (nats) of the sampling distribution at each generated token; empty for greedy."""


def generate(model, tokenizer, prompts: Sequence[list[int]], *, max_new_tokens: int, batch_size: int = BATCH_SIZE,
             temperature: float | None = None, seeds: Sequence[int] | None = None) -> list[Completion]:
    """Completions of `prompts` (token ids), in their order: greedy, or sampled at `temperature`
    with one seed per prompt (`seeds`). Batches of similar-length prompts, left-padded and masked,
    through `model.generate` with its KV cache."""
    if (temperature is None) != (seeds is None):
        raise ValueError("sampling needs a temperature and one seed per prompt; greedy neither")
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    done: list[Completion | None] = [None] * len(prompts)
    for begin in range(0, len(order), batch_size):
        chosen = order[begin : begin + batch_size]
        batch_seeds = [seeds[i] for i in chosen] if seeds is not None else None
        for i, completion in zip(chosen, _generate_batch(model, tokenizer, [prompts[i] for i in chosen],
                                                         max_new_tokens, temperature, batch_seeds)):
            done[i] = completion
    return [c for c in done if c is not None]


def _generate_batch(model, tokenizer, prompts, max_new_tokens, temperature, seeds) -> list[Completion]:
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p):] = 1
    sampler = SeededSampler(seeds, temperature) if seeds is not None and temperature is not None else None
    # A config of our own, not the checkpoint's generation_config.json: its top-k, top-p or
    # repetition penalty would change what is measured from one model to the next.
    settings = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
                                pad_token_id=pad, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=settings,
                             logits_processor=LogitsProcessorList([sampler]) if sampler else None)
    new = out[:, width:].tolist()  # (batch, generated)
    completions = []
    for b, tokens in enumerate(new):
        if eos in tokens:  # after its EOS a finished row is padded
            tokens = tokens[: tokens.index(eos) + 1]
        text = tokenizer.decode([t for t in tokens if t != eos], skip_special_tokens=True)
        entropies = [float(step[b]) for step in sampler.entropies[: len(tokens)]] if sampler else []
        completions.append(Completion(tokens, text, entropies))
    return completions


class SeededSampler:
    """A logits processor that samples each row from softmax(logits / temperature) with the row's
    own generator (inverse CDF: one uniform draw per row and token), and hands `generate`'s greedy
    step a distribution with all mass on that token. Records each step's entropy per row.

    Why not `do_sample=True`: its one global generator makes a row's sample depend on the other rows
    of its batch (and their number), so a serial run, a Ray run and another batch size would differ.
    """

    def __init__(self, seeds: Sequence[int], temperature: float):
        import torch

        self.temperature = temperature
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]  # on the CPU: any device draws alike
        self.entropies: list[Any] = []
        """One (batch,) tensor per generated position."""

    def __call__(self, input_ids, scores):
        import torch

        logp = torch.log_softmax(scores.double() / self.temperature, dim=-1)  # (batch, vocab)
        p = logp.exp()
        self.entropies.append(torch.where(p > 0, -p * logp, torch.zeros_like(p)).sum(-1).float().cpu())
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])  # (batch,)
        cdf = p.cumsum(-1)  # (batch, vocab); a token of probability 0 adds no step, so it is never drawn
        target = (u.clamp_min(1e-300).to(cdf.device) * cdf[:, -1])[:, None]
        choice = torch.searchsorted(cdf, target).clamp_max(scores.shape[-1] - 1)  # (batch, 1)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, choice, 0.0)
