"""Tiny real models for tests: GPT-NeoX (Pythia's architecture), OLMo-2 and GPT-2, built from a config.

GPT-NeoX and OLMo-2 use rotary position embeddings, which only see relative positions; GPT-2
adds learned absolute position embeddings, so it alone notices a sequence shifted by padding.

    from tiny import save_series, save_hub_cache, tiny_model, PYTHIA_TOKENIZER

    run = save_series(tmp_path / "my-run")                  # step0, step1, step2, step4
    run = save_series(tmp_path / "r", arch="olmo-2", folders="checkpoint-{step}")
    save_hub_cache(tmp_path / "hub", "org/tiny", ["step0", "step1"])   # HF_HUB_CACHE layout

Every checkpoint is a real HF folder (config.json, model.safetensors) with the Pythia
tokenizer beside it; later steps are earlier weights plus growing noise, so metrics differ
from step to step. Nothing is downloaded.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path

PYTHIA_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b"
ARCHS = ("gpt-neox", "olmo-2", "gpt2")
DEFAULT_STEPS = (0, 1, 2, 4)


def tiny_config(arch: str = "gpt-neox", *, layers: int = 2, d: int = 64, heads: int = 4, vocab: int = 50304):
    """A transformers config for a tiny model of `arch` (the Pythia vocabulary by default)."""
    if arch == "gpt-neox":
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * d,
            max_position_embeddings=2048,
            rotary_pct=0.25,
            tie_word_embeddings=True,
            eos_token_id=0,
            bos_token_id=0,
        )
    if arch == "olmo-2":
        from transformers import Olmo2Config

        return Olmo2Config(
            vocab_size=vocab,
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=2 * d,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            eos_token_id=0,
            pad_token_id=1,
            bos_token_id=None,
        )
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab,
            n_embd=d,
            n_layer=layers,
            n_head=heads,
            n_positions=2048,
            tie_word_embeddings=True,
            eos_token_id=0,
            bos_token_id=0,
        )
    raise ValueError(f"arch must be one of {ARCHS}")


def tiny_model(arch: str = "gpt-neox", *, seed: int = 0, **config):
    """A randomly initialised causal LM (eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **config)).eval()


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(PYTHIA_TOKENIZER)


def _evolve(model, step: int, seed: int) -> None:
    """Weights `at step`: the initial ones plus noise growing with log(step + 1)."""
    import math

    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    scale = 0.02 * math.log2(step + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


# Series already built by this process, by their arguments: a tiny series is deterministic (its
# seed), so a second request with the same arguments is a copy of the first, not another round of
# model init, evolve and save_pretrained per step. Each caller gets its own copy to change.
_BUILT: dict[tuple, tuple] = {}


def save_series(
    root: str | Path,
    *,
    arch: str = "gpt-neox",
    steps=DEFAULT_STEPS,
    folders: str = "step{step}",
    seed: int = 0,
    tokenizer_in_each: bool = True,
    **config,
) -> Path:
    """Save a local run: one HF checkpoint folder per step (named by `folders`), tokenizer included."""
    import torch

    root = Path(root)
    key = (arch, tuple(steps), folders, seed, tokenizer_in_each, tuple(sorted(config.items())))
    if key not in _BUILT:
        built = Path(tempfile.mkdtemp(prefix="geowh-tiny-"))
        atexit.register(shutil.rmtree, built, ignore_errors=True)
        _build_series(built / "series", arch, steps, folders, seed, tokenizer_in_each, config)
        _BUILT[key] = built / "series", torch.get_rng_state()
    series, rng = _BUILT[key]
    torch.set_rng_state(rng)  # torch's global generator left as a fresh build leaves it (seeded, then the init)
    # plain copies, not copy2: fresh modification times, as files just written have
    shutil.copytree(series, root, copy_function=shutil.copy, dirs_exist_ok=True)
    return root


def _build_series(root: Path, arch, steps, folders, seed, tokenizer_in_each, config) -> None:
    import copy

    base = tiny_model(arch, seed=seed, **config)
    tok = tokenizer()
    for step in steps:
        model = copy.deepcopy(base)
        _evolve(model, step, seed)
        folder = root / folders.format(step=step)
        model.save_pretrained(folder)
        if tokenizer_in_each:
            tok.save_pretrained(folder)
    if not tokenizer_in_each:
        tok.save_pretrained(root)


def corrupt(checkpoint: str | Path) -> None:
    """Truncate a checkpoint's weights file, as an interrupted download or copy would."""
    weights = Path(checkpoint) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])


def save_hub_cache(
    cache: str | Path, repo: str, revisions, *, arch: str = "gpt-neox", seed: int = 0, **config
) -> Path:
    """A Hugging Face hub cache (`HF_HUB_CACHE` layout) holding `repo` at `revisions`.

    `models--org--name/snapshots/<commit>/` per revision and `refs/<revision>` naming the
    commit, as `huggingface_hub` writes them, so `from_pretrained(repo, revision=...)` works
    with HF_HUB_OFFLINE=1. Returns the cache folder.
    """
    cache = Path(cache)
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    tmp = cache / ".tiny-build"
    for i, revision in enumerate(revisions):
        save_series(tmp, arch=arch, steps=(2**i - 1,), folders="ckpt", seed=seed, **config)
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        snapshot = repo_dir / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for file in sorted((tmp / "ckpt").iterdir()):  # content-addressed blobs, linked from the snapshot
            blob = repo_dir / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(file), blob)
            (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
        ref = repo_dir / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    shutil.rmtree(tmp, ignore_errors=True)
    return cache


DOC_MODULES = (
    "os", "re", "json", "collections", "itertools", "functools", "pathlib", "subprocess", "argparse",
    "logging", "typing", "dataclasses", "unittest", "asyncio", "threading", "socket", "sqlite3", "csv",
    "random", "statistics", "decimal", "datetime", "textwrap", "shutil", "tempfile", "zipfile", "tarfile",
    "hashlib", "inspect", "ast", "pickle", "enum", "contextlib", "io", "struct", "codecs", "heapq", "bisect",
)


def english_docs(limit: int | None = None) -> list[str]:
    """Real English text without network: paragraphs of the standard library's docstrings."""
    import importlib
    import re
    import warnings

    seen: dict[str, None] = {}
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        with warnings.catch_warnings():  # some attributes warn that they are deprecated
            warnings.simplefilter("ignore")
            objects = [module] + [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]
            docs = [getattr(obj, "__doc__", None) for obj in objects]
        for doc in docs:
            if not isinstance(doc, str):
                continue
            for paragraph in re.split(r"\n\s*\n", doc):
                text = " ".join(paragraph.split())
                if len(text) > 80:
                    seen.setdefault(text)
                if limit and len(seen) >= limit:
                    return list(seen)
    return list(seen)


def write_docs(path: str | Path, limit: int | None = None) -> Path:
    """A probe file: one stdlib docstring paragraph per line."""
    path = Path(path)
    path.write_text("\n".join(english_docs(limit)) + "\n", encoding="utf-8")
    return path
