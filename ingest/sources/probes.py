"""Probe sets: the texts run through every checkpoint.

A registry (`PROBES`) of hub datasets, streamed once and cached as text under
`settings().home / "probes"`, plus local files (`.txt` one document per line, `.jsonl` with a
`text` field, `.parquet` with a `text` column). `load_texts` gives the candidate documents
(tokenizer-free); `tokenize_probe` applies a tokenizer, drops short texts, samples `n`
deterministically and truncates: the result's id is the hash of texts, tokenizer and length
settings, so results on different probes never mix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from geowh.errors import InputError
from geowh.settings import settings
from geowh.texts import read_documents

# The paper's settings (METHOD.md §1).
DEFAULT_N = 15_000
DEFAULT_MAX_LEN = 512
DEFAULT_MIN_LEN = 32
DEFAULT_SEED = 0
# Documents streamed per requested sequence: some are dropped as too short, and a sample
# drawn from a larger pool than n is less tied to the dataset's order.
POOL_FACTOR = 2


@dataclass(frozen=True)
class ProbeSource:
    """A registry entry: a hub dataset streamed for probe texts."""

    name: str
    dataset: str
    config: str | None
    split: str
    text_field: str = "text"
    description: str = ""


PROBES: dict[str, ProbeSource] = {
    "fineweb": ProbeSource(
        "fineweb", "HuggingFaceFW/fineweb", "sample-10BT", "train", description="FineWeb sample-10BT (the paper's probe)"
    ),
    "wikitext": ProbeSource(
        "wikitext", "Salesforce/wikitext", "wikitext-103-raw-v1", "train", description="WikiText-103 raw (early checks)"
    ),
}


@dataclass(frozen=True)
class ProbeTexts:
    """Candidate documents of a probe, before any tokenizer sees them."""

    name: str
    dataset: str
    config: str | None
    split: str | None
    texts: tuple[str, ...] = field(repr=False)

    @property
    def texts_hash(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode())
            h.update(b"\0")
        return h.hexdigest()


@dataclass(frozen=True)
class Probe:
    """A tokenized probe: the token ids fed to the model and the probe's identity."""

    id: str
    name: str
    ids: tuple[tuple[int, ...], ...] = field(repr=False)
    row: dict = field(repr=False)
    """The `probes` table row."""

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def load_texts(probe: str | Path, n: int = DEFAULT_N) -> ProbeTexts:
    """The candidate documents of a registry probe (streamed once, then cached) or a local file."""
    path = Path(probe).expanduser()
    if str(probe) in PROBES:
        return _registry_texts(PROBES[str(probe)], pool=max(POOL_FACTOR * n, n + 100))
    if path.is_file():
        return ProbeTexts(path.name, str(path.resolve()), None, None, tuple(read_documents(path)))
    names = ", ".join(PROBES)
    raise InputError(f"unknown probe {probe!r}: use {names} or the path of a .txt, .jsonl or .parquet file")


def _registry_texts(source: ProbeSource, pool: int) -> ProbeTexts:
    """The first `pool` documents of the dataset's stream, from the local cache when it has them."""
    cache = settings().home / "probes" / f"{source.name}-{source.config}-{source.split}.jsonl"
    texts: list[str] = []
    if cache.is_file():
        texts = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    if len(texts) < pool:
        texts = _stream(source, pool)
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial")
        partial.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
        partial.replace(cache)  # a crash mid-write never leaves a truncated cache
    return ProbeTexts(source.name, source.dataset, source.config, source.split, tuple(texts[:pool]))


def _stream(source: ProbeSource, count: int) -> list[str]:
    from geowh.ingest.sources.series import require_hub

    # One line at once, not half a minute of retries; before importing datasets, which takes seconds.
    require_hub(f"stream the probe {source.dataset}")
    from datasets import load_dataset

    try:
        stream = load_dataset(source.dataset, source.config, split=source.split, streaming=True)
        texts = []
        for row in stream:
            text = row[source.text_field]
            if text and text.strip():
                texts.append(text)
            if len(texts) >= count:
                break
    except Exception as e:  # the datasets library raises many types for network and config failures
        raise InputError(
            f"cannot stream {source.dataset} ({source.config}, {source.split}): {e}. "
            f"Once downloaded the texts are cached under {settings().home / 'probes'}; "
            "offline, pass a local file with --probe PATH"
        ) from None
    return texts


# Fingerprints by the sha256 of the tokenizer's serialised form: re-sorting a 50k-entry
# vocabulary as canonical JSON takes ~0.3 s, reading the serialised form ~20 ms, and every
# probe tokenization (each round of bench/extract.py, each live probe) asks again.
_FINGERPRINTS: dict[str, str] = {}


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides token ids: the fast tokenizer's model and normalisation."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialised = backend.to_str()
        key = hashlib.sha256(serialised.encode()).hexdigest()
        if key not in _FINGERPRINTS:
            spec = json.loads(serialised)
            for name in ("padding", "truncation"):
                spec.pop(name, None)
            _FINGERPRINTS[key] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        return _FINGERPRINTS[key]
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def tokenize_probe(
    texts: ProbeTexts,
    tokenizer,
    *,
    n: int = DEFAULT_N,
    max_len: int = DEFAULT_MAX_LEN,
    min_len: int = DEFAULT_MIN_LEN,
    seed: int = DEFAULT_SEED,
    tokenizer_name: str | None = None,
) -> Probe:
    """Token ids of a deterministic sample of `n` usable documents, truncated to `max_len`.

    A document is usable when it has more than `min_len` tokens. With `n` at least the number
    of usable documents, all of them are used, in file order; otherwise `n` are drawn without
    replacement by a seeded generator and kept in file order.
    """
    import numpy as np

    if max_len < 1 or n < 1 or min_len < 0:
        raise InputError("--n and --max-len must be at least 1 and --min-len at least 0")
    # Enough tokens to decide the min-len rule without tokenizing whole books.
    encoded = tokenizer(
        list(texts.texts), truncation=True, max_length=max(max_len, min_len + 1)
    )["input_ids"]
    usable = [i for i, ids in enumerate(encoded) if len(ids) > min_len]
    if not usable:
        raise InputError(
            f"no document of probe {texts.name} has more than --min-len {min_len} tokens: lower --min-len"
        )
    if len(usable) < 2:
        raise InputError(
            f"only one document of probe {texts.name} has more than --min-len {min_len} tokens, and a spectrum "
            "needs at least 2: give a probe with more documents, or lower --min-len"
        )
    if n < len(usable):
        picks = np.sort(np.random.default_rng(seed).choice(len(usable), size=n, replace=False))
        usable = [usable[i] for i in picks]
    chosen = [texts.texts[i] for i in usable]
    ids = tuple(tuple(encoded[i][:max_len]) for i in usable)

    fingerprint = tokenizer_fingerprint(tokenizer)
    h = hashlib.sha256()
    h.update(json.dumps({"tokenizer": fingerprint, "max_len": max_len, "min_len": min_len}).encode())
    for t in chosen:
        h.update(t.encode())
        h.update(b"\0")
    content_hash = h.hexdigest()
    probe_id = f"{texts.name}-{content_hash[:12]}"
    row = {
        "probe": probe_id,
        "name": texts.name,
        "dataset": texts.dataset,
        "config": texts.config,
        "split": texts.split,
        "sequences": len(ids),
        "max_len": max_len,
        "min_len": min_len,
        "seed": seed,
        "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", None),
        "content_hash": content_hash,
    }
    return Probe(probe_id, texts.name, ids, row)
