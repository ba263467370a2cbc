"""∞-gram indexes: built offline in infini-gram's on-disk format, queried with its engine.

geowh tokenizes the corpus itself (any Hugging Face tokenizer name or local path), because the
package's own indexer fetches its tokenizers from the hub. The files are those infini-gram 2.6.0
reads for a version-4 index, one set per shard `s`:

- `tokenized.s`: the documents' token ids, little-endian u16 (u32 when the vocabulary has more
  than 65,535 ids), each document preceded by a separator of all-ones bytes (0xFFFF), so an
  n-gram never spans two documents;
- `offset.s`: u64 byte offset of each document (of its separator) in `tokenized.s`;
- `table.s`: the suffix array: byte offsets of every token position, sorted by the bytes that
  follow, each stored in ceil(log2(size of tokenized.s) / 8) little-endian bytes.

The suffix array comes from libdivsufsort (`pydivsufsort`) over the raw bytes, keeping the
positions that start a token: the engine compares suffixes byte by byte, so that order is the
one it binary-searches. A `geowh-index.json` next to the files records the tokenizer and the
corpus statistics.
"""

from __future__ import annotations

import gc
import json
import math
import os
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from itertools import chain
from pathlib import Path
from typing import Any

from geowh.errors import GeowhError, InputError
from geowh.outputs import check_output, output_path
from geowh.ingest.texts import SUFFIXES, iter_documents
from geowh.warehouse import Warehouse, as_warehouse

META_FILE = "geowh-index.json"
INDEX_VERSION = 4
# The engine sorts every file of an index directory by these substrings of its full path.
ENGINE_MARKERS = ("tokenized", "table", "offset", "metadata", "metaoff")
TOKENIZE_BATCH = 1024
SA_WRITE_CHUNK = 1 << 22  # suffix-array entries converted and written at a time

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): stage is "tokenize" (bytes read) or "suffix array" (shards)."""


@dataclass(frozen=True)
class IndexMeta:
    """What `geowh-index.json` records about an index."""

    tokenizer: str
    token_dtype: str  # u16 or u32
    vocab_size: int
    eos_token_id: int
    shards: int
    documents: int
    tokens: int  # real tokens, separators not counted
    seconds: float
    built_at: str
    sources: list[str] = field(default_factory=list)
    version: int = INDEX_VERSION

    @property
    def width(self) -> int:
        return 2 if self.token_dtype == "u16" else 4


@dataclass(frozen=True, slots=True)  # slots: a batch builds tens of thousands
class InfgramProb:
    """P∞(cont | prompt): the longest suffix of the prompt found in the corpus decides."""

    prob: float  # cont_cnt / prompt_cnt; 0 when the continuation never follows that suffix
    prompt_cnt: int  # occurrences of the suffix used
    cont_cnt: int  # occurrences of the suffix followed by the continuation
    suffix_len: int  # tokens of the prompt's suffix used (0 = unigram)


# -- tokenizers ---------------------------------------------------------------------------------


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer by hub id or local folder; never adds special tokens for us."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    if not Path(name_or_path).expanduser().exists():
        from geowh.ingest.series import require_hub

        require_hub(f"load the tokenizer {name_or_path}")  # one line at once, not a minute of retries
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise InputError(
            f"cannot load the tokenizer {name_or_path!r} ({str(e).splitlines()[0]}); "
            "give a local folder with tokenizer.json or a hub id that is in the local cache"
        ) from None


def encode_batch(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts, no special tokens; the Rust backend's fast path when there is one."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tok(texts, add_special_tokens=False)["input_ids"]


def token_dtype_for(vocab_size: int) -> str:
    """u16 when every id fits below the 0xFFFF separator, else u32."""
    return "u16" if vocab_size <= 0xFFFF else "u32"


def _numpy_dtype(token_dtype: str):
    import numpy as np

    return np.dtype("<u2") if token_dtype == "u16" else np.dtype("<u4")


# -- building -----------------------------------------------------------------------------------


def corpus_files(paths: Sequence[str | Path]) -> list[Path]:
    """The corpus files named, folders expanded to their .txt/.jsonl/.parquet files (sorted)."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{path} holds no .txt, .jsonl or .parquet file to index")
            files.extend(found)
        elif not path.is_file():
            raise InputError(f"corpus file {path} does not exist")
        elif path.suffix not in SUFFIXES:
            raise InputError(f"{path}: corpus files must be .txt (a document per line), .jsonl or .parquet (`text`)")
        else:
            files.append(path)
    if not files:
        raise InputError("no corpus file given: pass .txt, .jsonl or .parquet files (or folders holding them)")
    return files


def build_index(
    corpus: Sequence[str | Path],
    tokenizer: str,
    out: str | Path,
    shards: int = 1,
    progress: Progress | None = None,
) -> IndexMeta:
    """Tokenize `corpus` and write an infini-gram (version 4) index into `out`.

    Documents go to shards round-robin, as upstream's indexer does. Empty documents are skipped.
    A build that fails leaves no folder behind.
    """
    start = time.perf_counter()
    if shards < 1:
        raise InputError(f"--shards must be at least 1, not {shards}")
    out = Path(out)
    files = corpus_files(corpus)
    check_output(out, folder=True)
    tok = load_tokenizer(tokenizer)
    # Built in a temporary folder beside `out` and renamed when whole: a half-built index
    # (a failure, Ctrl-C, a full disk) must not pass for a whole one.
    with output_path(out, folder=True) as building:
        meta = _build(files, tok, str(tokenizer), building, shards, progress, start)
        (building / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return meta


def _build(files: list[Path], tok, tokenizer: str, out: Path, shards: int, progress: Progress | None,
           start: float) -> IndexMeta:
    import numpy as np

    vocab = len(tok)
    token_dtype = token_dtype_for(vocab)
    dtype = _numpy_dtype(token_dtype)
    separator = np.array([np.iinfo(dtype).max], dtype=dtype)

    total_bytes = sum(p.stat().st_size for p in files)
    done_bytes, documents, tokens = 0, 0, 0
    ds_files = [open(out / f"tokenized.{s}", "wb") for s in range(shards)]
    od_files = [open(out / f"offset.{s}", "wb") for s in range(shards)]
    sizes = [0] * shards
    try:
        for texts, consumed in _batches((d for p in files for d in iter_documents(p)), TOKENIZE_BATCH):
            ids = encode_batch(tok, texts) if texts else []
            for row in ids:
                s = documents % shards
                content = np.concatenate([separator, np.asarray(row, dtype=dtype)])
                od_files[s].write(np.array([sizes[s]], dtype="<u8").tobytes())
                ds_files[s].write(content.tobytes())
                sizes[s] += content.nbytes
                documents += 1
                tokens += len(row)
            done_bytes += consumed
            if progress:
                progress("tokenize", min(done_bytes, total_bytes), total_bytes)
    finally:
        for f in ds_files + od_files:
            f.close()
    if documents == 0:
        raise InputError(f"the corpus ({len(files)} file(s)) holds no non-empty document")
    if documents < shards:
        raise InputError(f"{documents} document(s) cannot fill {shards} shards: use --shards {documents} or fewer")
    for s in range(shards):
        if progress:
            progress("suffix array", s, shards)
        write_suffix_array(out / f"tokenized.{s}", out / f"table.{s}", dtype.itemsize)
    if progress:
        progress("suffix array", shards, shards)
    return IndexMeta(
        tokenizer=tokenizer,
        token_dtype=token_dtype,
        vocab_size=vocab,
        eos_token_id=tok.eos_token_id if tok.eos_token_id is not None else 0,
        shards=shards,
        documents=documents,
        tokens=tokens,
        seconds=round(time.perf_counter() - start, 3),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        sources=[str(p.resolve()) for p in files],
    )


def _batches(documents: Iterable[tuple[str, int]], size: int) -> Iterator[tuple[list[str], int]]:
    texts, consumed = [], 0
    for text, n in documents:
        consumed += n
        if text:
            texts.append(text)
        if len(texts) >= size:
            yield texts, consumed
            texts, consumed = [], 0
    if texts or consumed:
        yield texts, consumed


def pointer_bytes(ds_size: int) -> int:
    """Bytes per suffix-array entry, as upstream's indexer computes it."""
    return int(math.ceil(math.log2(ds_size) / 8))


def write_suffix_array(ds_path: Path, sa_path: Path, width: int) -> None:
    """The suffix array of a `tokenized` file in the engine's layout (see the module docstring)."""
    import numpy as np
    from pydivsufsort import divsufsort

    data = np.fromfile(ds_path, dtype=np.uint8)
    ratio = pointer_bytes(data.size)
    order = divsufsort(data, force64=data.size > np.iinfo(np.int32).max)  # every byte position
    del data
    with open(sa_path, "wb") as f:
        for begin in range(0, order.size, SA_WRITE_CHUNK):
            chunk = order[begin : begin + SA_WRITE_CHUNK]
            pointers = chunk[chunk % width == 0].astype("<u8")  # token starts only
            f.write(pointers.view(np.uint8).reshape(-1, 8)[:, :ratio].tobytes())


# -- opening and querying -----------------------------------------------------------------------


def read_meta(directory: str | Path, tokenizer: str | None = None) -> IndexMeta:
    """The index's meta file; for an index built elsewhere, `tokenizer` names its tokenizer."""
    import numpy as np

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"no index folder at {directory}: build one with `geowh index build`")
    meta_path = directory / META_FILE
    if meta_path.exists():
        known = {f.name for f in fields(IndexMeta)}
        try:
            recorded = json.loads(meta_path.read_text())
            meta = IndexMeta(**{k: v for k, v in recorded.items() if k in known})
        except (ValueError, TypeError, AttributeError) as e:  # truncated, not an object, fields missing
            raise InputError(
                f"{meta_path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                f"build the index again with `geowh index build`"
            ) from None
        if tokenizer is not None and tokenizer != meta.tokenizer:
            meta = IndexMeta(**{**asdict(meta), "tokenizer": tokenizer})
        return meta
    if tokenizer is None:
        raise InputError(
            f"{directory} has no {META_FILE}: for an index built elsewhere, name its tokenizer "
            "with --index-tokenizer (upstream Pile indexes: EleutherAI/gpt-neox-20b or meta-llama/Llama-2-7b-hf)"
        )
    tok = load_tokenizer(tokenizer)
    token_dtype = token_dtype_for(len(tok))
    shards = sorted(directory.glob("tokenized.*"))
    width = _numpy_dtype(token_dtype).itemsize
    sizes = [p.stat().st_size for p in shards]
    offsets = [directory / p.name.replace("tokenized", "offset") for p in shards]
    docs = sum(p.stat().st_size // 8 for p in offsets if p.exists())
    if shards and sizes[0] >= width:
        first = np.fromfile(shards[0], dtype=np.uint8, count=width)
        if not (first == 0xFF).all():
            raise InputError(
                f"{shards[0]} does not start with a {token_dtype} document separator: "
                f"the tokenizer {tokenizer!r} does not match how this index was built"
            )
    return IndexMeta(
        tokenizer=tokenizer,
        token_dtype=token_dtype,
        vocab_size=len(tok),
        eos_token_id=tok.eos_token_id if tok.eos_token_id is not None else 0,
        shards=len(shards),
        documents=docs,
        tokens=sum(sizes) // width - docs,
        seconds=0.0,
        built_at="",
        sources=[],
    )


def _check_files(directory: Path, meta: IndexMeta) -> None:
    """Refuse what would make the engine abort the process (its checks are C++ asserts)."""
    shards = sorted(directory.glob("tokenized.*"))
    if not shards:
        raise InputError(f"{directory} holds no tokenized.* file: it is not an infini-gram index")
    for ds in shards:
        suffix = ds.name.removeprefix("tokenized")
        sa, od = directory / f"table{suffix}", directory / f"offset{suffix}"
        if not sa.exists() or not od.exists():
            raise InputError(f"{directory}: {ds.name} lacks its table{suffix} or offset{suffix}; rebuild the index")
        ds_size = ds.stat().st_size
        if ds_size == 0 or ds_size % meta.width:
            raise InputError(f"{ds} is not a whole number of {meta.token_dtype} tokens; rebuild the index")
        if sa.stat().st_size % (ds_size // meta.width) or od.stat().st_size % 8:
            raise InputError(f"{sa} or {od} does not match {ds.name} (truncated build?); rebuild the index")


def _engine_dir(directory: Path) -> str:
    """A path to `directory` without the substrings the engine sorts files by."""
    path = str(directory.resolve())
    if not any(m in path for m in ENGINE_MARKERS):
        return path
    link = Path(tempfile.mkdtemp(prefix="geowh-ig-")) / "index"
    link.symlink_to(directory.resolve(), target_is_directory=True)
    return str(link)


def _remove_link(path: str) -> None:
    link = Path(path)
    if link.is_symlink():
        link.unlink()
        link.parent.rmdir()


class Index:
    """An opened ∞-gram index and its tokenizer.

    >>> index = Index("indexes/pile-sample")
    >>> index.query("Question: What is the capital of France? Answer: Paris")
    {'tokens': [...], 'count': 3, 'prob': 0.75, 'suffix_len': 12}

    `workers` (default: the CPU count) is how many cores queries use: threads for `map`'s
    engine calls, processes for a big `probs` batch (docs/scale.md).
    """

    def __init__(self, directory: str | Path, tokenizer: str | None = None, workers: int | None = None):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory, tokenizer)
        _check_files(self.directory, self.meta)
        if workers is not None and workers < 1:
            raise InputError(f"workers must be at least 1, not {workers}")
        self.workers = workers or os.cpu_count() or 1
        self._pool = None  # worker processes for `probs`, started by the first batch that needs them
        self._tokenizer = None
        from infini_gram.engine import InfiniGramEngine

        engine_dir = _engine_dir(self.directory)
        if engine_dir != str(self.directory.resolve()):
            weakref.finalize(self, _remove_link, engine_dir)
        # Prefetching only issues speculative reads; at depth 0 queries are ~10x faster here.
        self.engine = InfiniGramEngine(
            index_dir=engine_dir,
            eos_token_id=int(self.meta.eos_token_id),
            vocab_size=max(int(self.meta.vocab_size), int(self.meta.eos_token_id) + 1),
            version=int(self.meta.version),
            token_dtype=self.meta.token_dtype,
            ds_prefetch_depth=0,
            sa_prefetch_depth=0,
            od_prefetch_depth=0,
        )
        self._max_id = 0xFFFE if self.meta.token_dtype == "u16" else 0xFFFFFFFE
        self._shards: list[_Shard] | None = None  # numpy views of the files, opened by `probs`

    def __repr__(self) -> str:
        return f"Index({str(self.directory)!r}, tokenizer={self.meta.tokenizer!r})"

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.meta.tokenizer)
        return self._tokenizer

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(t) for t in ids]  # the engine wants plain Python ints
        bad = [t for t in ids if not 0 <= t <= self._max_id]
        if bad:
            raise InputError(f"token id(s) {bad[:5]} outside this {self.meta.token_dtype} index's range")
        return ids

    def count(self, ids: Sequence[int]) -> int:
        """Occurrences of the token sequence in the corpus (never across a document boundary)."""
        return int(_checked(self.engine.count(self._ids(ids)))["count"])

    def prob(self, prompt: Sequence[int], cont: int) -> InfgramProb:
        """P∞(cont | prompt) with the suffix it backed off to."""
        r = _checked(self.engine.infgram_prob(self._ids(prompt), self._ids([cont])[0]))
        # prob is -1 only when even the empty suffix is absent, i.e. an empty corpus.
        return InfgramProb(max(float(r["prob"]), 0.0), int(r["prompt_cnt"]), int(r["cont_cnt"]), int(r["suffix_len"]))

    def continuation_probs(self, prompt: Sequence[int], target: Sequence[int]) -> list[InfgramProb]:
        """P∞(tᵢ | prompt ⊕ t<i) for every token of `target`."""
        ids = self._ids(list(prompt) + list(target))
        return [self.prob(ids[: len(prompt) + i], ids[len(prompt) + i]) for i in range(len(target))]

    def probs(self, queries: Sequence[tuple[Sequence[int], int]]) -> list[InfgramProb]:
        """P∞(cont | prompt) of many (prompt, cont) pairs, equal to `prob` of each.

        A batch of BATCH_MIN or more is searched without the engine: the engine starts two
        threads per shard for each of the ~10 suffix-array searches of a query, and that
        thread churn, not the search, is most of its cost (docs/scale.md). Here all the
        queries' searches advance together, one vectorized binary-search step at a time. A
        batch big enough to share (SHARE_MIN queries a share) is split over `workers`
        processes: this one and worker processes kept for the index's lifetime, each with its
        own memory maps of the files (threads would wait on each other: numpy's bookkeeping
        between the gathers holds the GIL).
        """
        if len(queries) < BATCH_MIN:
            return [self.prob(p, c) for p, c in queries]
        if self._shards is None:
            self._shards = _open_shards(self.directory, self.meta.width)
        n = len(queries)
        shares = max(1, min(self.workers, n // SHARE_MIN))
        # This process also turns its share into arrays and builds every answer: it searches less.
        own = round(n / ((shares - 1) * (1 + HOME_COST) + 1))
        cuts = [own + (n - own) * i // (shares - 1) for i in range(shares)] if shares > 1 else [n]
        sent = [self._workers().submit(_share_probs, *self._flat(queries[a:b])) for a, b in zip(cuts, cuts[1:])]
        out = _answers(*_batch_probs(self._shards, self.meta.width, *self._flat(queries[:own])))
        try:
            for f in sent:
                out += _answers(*f.result())
        except BrokenProcessPool:
            self._pool = None  # the next batch starts fresh ones
            raise GeowhError(
                "an ∞-gram worker process stopped before answering: a script that runs batched queries "
                "on worker processes must start them under `if __name__ == \"__main__\":` (Python's "
                "multiprocessing re-imports it in each), or open the index with workers=1"
            ) from None
        return out

    def _flat(self, queries: Sequence[tuple[Sequence[int], int]]):
        """Every query's prompt then continuation in one array (the index's token dtype), and the
        prompts' lengths; ids outside the index's range raise as `_ids` does."""
        import numpy as np

        lengths = np.fromiter((len(p) for p, _ in queries), dtype=np.int64, count=len(queries))
        flat = chain.from_iterable((*p, c) for p, c in queries)
        ids = np.fromiter(flat, dtype=np.int64, count=int(lengths.sum()) + len(queries))
        if ids.min() < 0 or ids.max() > self._max_id:
            for p, c in queries:
                self._ids([*p, c])
        return ids.astype(_numpy_dtype(self.meta.token_dtype)), lengths

    def _workers(self):
        """The worker processes (workers − 1 of them), started once: spawned, never forked, since
        the caller may hold torch or the engine's threads."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.workers - 1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_open_worker, initargs=(str(self.directory), self.meta.width),
            )
            # Waits for the workers to exit: on 3.11 a pool left shutting down can make the
            # interpreter's exit write to its closed wake-up pipe ("Bad file descriptor").
            weakref.finalize(self, self._pool.shutdown, wait=True, cancel_futures=True)
        return self._pool

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`fn` over `items` on `workers` threads: the engine's calls release the GIL."""
        if self.workers <= 1 or len(items) < 2:
            return [fn(x) for x in items]
        # transformers' lazy modules are not safe to import first from a worker thread (in a fresh
        # process `geowh index stats` failed with "cannot import name AutoTokenizer"): load here.
        self.tokenizer  # noqa: B018
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(fn, items))

    def query(self, text: str) -> dict[str, Any]:
        """Tokens, count of the whole sequence, and P∞(last token | the ones before)."""
        tokens = self.tokenize(text)
        if not tokens:
            raise InputError("the text tokenizes to nothing: give some text to look up")
        p = self.prob(tokens[:-1], tokens[-1])
        return {"tokens": tokens, "count": self.count(tokens), "prob": p.prob, "suffix_len": p.suffix_len}


# -- batched queries: the engine's search, vectorized over queries ---------------------------------

BATCH_MIN = 32  # below this the engine's per-query calls are quicker than numpy's per-step overhead (measured)
SHARE_MIN = 1024  # queries per process below which sending a share costs more than it saves
HOME_COST = 0.06  # a query's arrays and InfgramProb, in searches of one (measured: ~1.2 µs of ~20)


@dataclass(frozen=True)
class _Windows:
    """The 8 bytes at each of many offsets of a byte buffer, gathered as one u64 each (a view: no copy).

    `body[i]` holds bytes [i * step, i * step + 8) read in `order` ('>' = big-endian, so that u64
    order is byte order); the few windows that would run past the buffer come from `tail`, a
    zero-padded copy. The zeros matter: the engine sorts a suffix cut short by the end of the
    file before any longer pattern it starts, and missing bytes read as zero can tie such a
    pattern (which `_precedes` then settles) but never exceed it.
    """

    body: Any  # (count,) u64 view
    tail: Any  # (k,) u64: windows count, count + 1, ... up to the buffer's end

    @classmethod
    def of(cls, data, step: int, order: str) -> "_Windows":
        import numpy as np
        from numpy.lib.stride_tricks import as_strided

        count = max((data.size - 8) // step + 1, 0)
        body = as_strided(data, shape=(count, 8), strides=(step, 1)).view(order + "u8")[:, 0]
        padded = np.concatenate([data[count * step :], np.zeros(8 + step, dtype=np.uint8)])
        last = data.size // step  # the window at the buffer's very end (read only when a pattern runs past it)
        tail = as_strided(padded, shape=(last - count + 1, 8), strides=(step, 1)).view(order + "u8")[:, 0].copy()
        return cls(body, tail)

    def __getitem__(self, at):
        import numpy as np

        count = self.body.size
        over = at >= count
        if not over.any():
            return self.body[at]
        out = self.body[np.where(over, 0, at)] if count else np.zeros(at.size, dtype=np.uint64)
        out[over] = self.tail[at[over] - count]
        return out


@dataclass(frozen=True)
class _Shard:
    size: int  # bytes of tokenized.s
    tokens: int  # suffix-array entries
    text: _Windows  # tokenized.s from any byte on, big-endian
    pointers: _Windows  # table.s entries, little-endian, to be masked to ptr_mask
    ptr_mask: int


def _open_shards(directory: Path, width: int) -> list[_Shard]:
    import numpy as np

    shards = []
    for ds_path in sorted(directory.glob("tokenized.*")):
        suffix = ds_path.name.removeprefix("tokenized")
        ds = np.memmap(ds_path, dtype=np.uint8, mode="r").view(np.ndarray)
        sa = np.memmap(directory / f"table{suffix}", dtype=np.uint8, mode="r").view(np.ndarray)
        tokens = ds.size // width
        ptr_size = sa.size // tokens
        shards.append(_Shard(ds.size, tokens, _Windows.of(ds, 1, ">"), _Windows.of(sa, ptr_size, "<"),
                             (1 << (8 * ptr_size)) - 1))
    return shards


def _masks():
    import numpy as np

    # MASK[m] keeps the first m bytes of a big-endian 8-byte key.
    return np.array([0] + [~((1 << (8 * (8 - m))) - 1) & (2**64 - 1) for m in range(1, 9)], dtype=np.uint64)


@dataclass(frozen=True)
class _Patterns:
    """Searches' patterns: search i's is `nb[i]` bytes from `offset[i]` of a padded byte buffer."""

    words: _Windows  # the buffer, from any byte on, big-endian
    offset: Any  # (searches,) int64
    nb: Any  # (searches,) int64
    head: Any  # (searches,) u64: the first 8 bytes, masked to the pattern's length
    head_mask: Any  # (searches,) u64

    @classmethod
    def of(cls, words: _Windows, offset, nb, masks) -> "_Patterns":
        import numpy as np

        head_mask = masks[np.minimum(nb, 8)]
        return cls(words, offset, nb, words[offset] & head_mask, head_mask)

    def take(self, sel) -> "_Patterns":
        return _Patterns(self.words, self.offset[sel], self.nb[sel], self.head[sel], self.head_mask[sel])


def _precedes(shard: _Shard, ranks, pats: _Patterns, upper: bool, masks):
    """Whether the suffix at each rank sorts before its search's pattern (upper: or starts with it),
    bytes compared as the engine does: a suffix cut short by the end of the file is less."""
    import numpy as np

    ptr = (shard.pointers[ranks] & np.uint64(shard.ptr_mask)).astype(np.int64)  # byte offsets in tokenized.s
    w = shard.text[ptr] & pats.head_mask
    right = w < pats.head
    tie = np.flatnonzero(w == pats.head)
    seen = 8  # pattern bytes compared
    while tie.size:  # equal so far: the file's end, the pattern's end, or the next 8 bytes decide
        at, nb = ptr[tie], pats.nb[tie]
        short = at + np.minimum(nb, seen) > shard.size
        last = nb <= seen
        right[tie[short | (last & upper)]] = True
        go = ~(short | last)
        tie = tie[go]
        if not tie.size:
            break
        mask = masks[np.minimum(nb[go] - seen, 8)]
        w = shard.text[at[go] + seen] & mask
        p = pats.words[pats.offset[tie] + seen] & mask
        right[tie[w < p]] = True
        tie = tie[w == p]
        seen += 8
    return right


def _search(shard: _Shard, pats: _Patterns, base, n, upper: bool, masks):
    """The first rank in [base, base + n) whose suffix is > (upper) or ≥ the pattern, else base + n:
    the bound the engine's binary search finds, by a branchless bisection whose steps all searches
    share (n may be one number for all)."""
    import numpy as np

    base = np.broadcast_to(np.asarray(base, dtype=np.int64), pats.nb.shape).copy()
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), pats.nb.shape)
    out = base.copy()  # an empty range's answer
    live = np.flatnonzero(n > 0)
    b, m, sub = base[live], n[live], pats.take(live)
    while live.size:
        one = m == 1
        if one.any():  # a single candidate left: it is the bound unless it precedes the pattern
            k = np.flatnonzero(one)
            out[live[k]] = b[k] + _precedes(shard, b[k], sub.take(k), upper, masks)
            keep = np.flatnonzero(~one)
            live, b, m, sub = live[keep], b[keep], m[keep], sub.take(keep)
            if not live.size:
                break
        half = m >> 1
        probe = b + half
        b = np.where(_precedes(shard, probe, sub, upper, masks), probe, b)
        m = m - half
    return out


def _count(shards, pats: _Patterns, masks, within=None):
    """Occurrences of each pattern summed over the shards, and its (first, end) ranks in each shard;
    `within` narrows each shard's search to earlier ranges (a longer pattern's range lies in them)."""
    import numpy as np

    total = np.zeros(pats.nb.size, dtype=np.int64)
    ranges = []
    for s, shard in enumerate(shards):
        lo, hi = within[s] if within else (0, shard.tokens)
        first = _search(shard, pats, lo, hi - lo, False, masks)
        end = _search(shard, pats, first, hi - first, True, masks)
        total += end - first
        ranges.append((first, end))
    return total, ranges


def _occurs(shards, pats: _Patterns, masks):
    """Whether each pattern occurs at all: one search per shard (its first rank), not two."""
    import numpy as np

    found = np.zeros(pats.nb.size, dtype=bool)
    todo = np.arange(pats.nb.size)
    for shard in shards:
        sub = pats.take(todo)
        first = _search(shard, sub, 0, shard.tokens, False, masks)
        inside = first < shard.tokens
        hit = np.zeros(todo.size, dtype=bool)
        hit[inside] = _precedes(shard, first[inside], sub.take(inside), True, masks)  # starts with it
        found[todo[hit]] = True
        todo = todo[~hit]
        if not todo.size:
            break
    return found


def _batch_probs(shards: list[_Shard], width: int, ids, lengths):
    """The engine's `infgram_prob` for each query: the longest suffix of the prompt that occurs
    (binary lifting over its length, then bisection), then its and the continuation's counts.

    `ids` holds each query's prompt and continuation one after another, `lengths` the prompts'
    lengths. Returns (prompt_cnt, cont_cnt, suffix_len) arrays.
    """
    import numpy as np

    masks = _masks()
    n = lengths.size
    row = (int(lengths.max()) + 1) + 8 // width  # tokens per padded row: the last pattern byte + 8 read
    pat = np.zeros((n, row), dtype=np.dtype("<u2") if width == 2 else np.dtype("<u4"))
    first = np.cumsum(lengths + 1) - (lengths + 1)
    rows = np.repeat(np.arange(n), lengths + 1)
    pat[rows, np.arange(ids.size) - first[rows]] = ids
    words = _Windows.of(pat.reshape(-1).view(np.uint8), 1, ">")
    base = np.arange(n, dtype=np.int64) * row * width

    def suffix(sel, k, cont=0):  # the last k prompt tokens of each selected query (⊕ its continuation)
        return _Patterns.of(words, base[sel] + (lengths[sel] - k) * width, (k + cont) * width, masks)

    lo, hi = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:  # binary lifting: double the suffix while it occurs
        over = hi[todo] > lengths[todo]
        hi[todo[over]] = lengths[todo[over]] + 1
        todo = todo[~over]
        if not todo.size:
            break
        todo = todo[_occurs(shards, suffix(todo, hi[todo]), masks)]
        lo[todo], hi[todo] = hi[todo], hi[todo] * 2
    todo = np.flatnonzero(hi - lo > 1)
    while todo.size:  # bisection within [lo, hi)
        mid = (lo[todo] + hi[todo]) >> 1
        found = _occurs(shards, suffix(todo, mid), masks)
        lo[todo[found]], hi[todo[~found]] = mid[found], mid[~found]
        todo = todo[hi[todo] - lo[todo] > 1]
    everyone = np.arange(n)
    prompt_cnt, ranges = _count(shards, suffix(everyone, lo), masks)
    cont_cnt, _ = _count(shards, suffix(everyone, lo, cont=1), masks, within=ranges)
    return prompt_cnt, cont_cnt, lo


def _answers(prompt_cnt, cont_cnt, suffix_len) -> list[InfgramProb]:
    import numpy as np

    found = prompt_cnt > 0
    prob = np.divide(cont_cnt, prompt_cnt, out=np.zeros(found.size), where=found)  # as the engine's double division
    cont_cnt = np.where(found, cont_cnt, 0)
    with _collector_paused():
        return list(map(InfgramProb, prob.tolist(), prompt_cnt.tolist(), cont_cnt.tolist(), suffix_len.tolist()))


@contextmanager
def _collector_paused():
    """Tens of thousands of new objects start collections that scan every live object: half of
    building a batch's answers here. The collector runs again (if it ran before) right after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_WORKER: dict[str, Any] = {}  # in a worker process: its own memory maps of the index's files


def _open_worker(directory: str, width: int) -> None:
    _WORKER.update(shards=_open_shards(Path(directory), width), width=width)


def _share_probs(ids, lengths):
    """`_batch_probs` of one share of a batch, in a worker process."""
    return _batch_probs(_WORKER["shards"], _WORKER["width"], ids, lengths)


def _checked(result: Any) -> dict:
    """The engine reports bad input as {'error': ...} instead of raising."""
    if isinstance(result, dict) and "error" in result:
        raise InputError(f"infini-gram refused the query: {result['error']}")
    return result


def index_row(index: "Index | str | Path") -> dict[str, Any]:
    """The `indexes` table row of an index."""
    directory = index.directory if isinstance(index, Index) else Path(index)
    meta = index.meta if isinstance(index, Index) else read_meta(directory)
    return {
        "index_dir": str(directory.resolve()),
        "tokenizer": meta.tokenizer,
        "token_dtype": meta.token_dtype,
        "shards": meta.shards,
        "documents": meta.documents,
        "tokens": meta.tokens,
        "seconds": meta.seconds,
        "built_at": meta.built_at or None,
        "meta": asdict(meta),
    }


def record_index(wh: str | Path | Warehouse, directory: str | Path) -> dict[str, Any]:
    """Write the index's row to `indexes`; ∞-gram rows cached for an older index there are dropped."""
    row = index_row(directory)
    stale = ("DELETE FROM infgram_items WHERE index_dir = ?", [row["index_dir"]])
    as_warehouse(wh).write({"indexes": [row]}, before=[stale])
    return row
