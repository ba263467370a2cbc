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

import json
import math
import os
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from geowh.errors import InputError
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


@dataclass(frozen=True)
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
        meta = IndexMeta(**{k: v for k, v in json.loads(meta_path.read_text()).items() if k in known})
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
    """

    def __init__(self, directory: str | Path, tokenizer: str | None = None, threads: int | None = None):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory, tokenizer)
        _check_files(self.directory, self.meta)
        self.threads = threads or os.cpu_count() or 1
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
        queries' searches advance together, one vectorized binary-search step at a time, on
        `threads` threads that each take a share of the batch.
        """
        checked = [(self._ids(p), self._ids([c])[0]) for p, c in queries]
        if len(checked) < BATCH_MIN:
            return [self.prob(p, c) for p, c in checked]
        if self._shards is None:
            self._shards = _open_shards(self.directory, self.meta.width)
        parts = [checked[i :: self.threads] for i in range(min(self.threads, len(checked)))]
        width = self.meta.width
        if len(parts) == 1:
            done = [_batch_probs(self._shards, width, parts[0])]
        else:
            with ThreadPoolExecutor(len(parts)) as pool:
                done = list(pool.map(lambda part: _batch_probs(self._shards, width, part), parts))
        out: list[InfgramProb] = [None] * len(checked)  # type: ignore[list-item]
        for i, part in enumerate(done):
            out[i :: len(parts)] = part
        return out

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`fn` over `items` on threads: the engine's calls release the GIL."""
        if self.threads <= 1 or len(items) < 2:
            return [fn(x) for x in items]
        # transformers' lazy modules are not safe to import first from a worker thread (in a fresh
        # process `geowh index stats` failed with "cannot import name AutoTokenizer"): load here.
        self.tokenizer  # noqa: B018
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(fn, items))

    def query(self, text: str) -> dict[str, Any]:
        """Tokens, count of the whole sequence, and P∞(last token | the ones before)."""
        tokens = self.tokenize(text)
        if not tokens:
            raise InputError("the text tokenizes to nothing: give some text to look up")
        p = self.prob(tokens[:-1], tokens[-1])
        return {"tokens": tokens, "count": self.count(tokens), "prob": p.prob, "suffix_len": p.suffix_len}


# -- batched queries: the engine's search, vectorized over queries ---------------------------------

BATCH_MIN = 256  # below this the engine's per-query calls are quicker than numpy's per-step overhead


@dataclass(frozen=True)
class _Shard:
    ds: Any  # (bytes,) uint8: tokenized.s
    sa: Any  # (tokens * ptr_size,) uint8: table.s
    tokens: int
    ptr_size: int


def _open_shards(directory: Path, width: int) -> list[_Shard]:
    import numpy as np

    shards = []
    for ds_path in sorted(directory.glob("tokenized.*")):
        suffix = ds_path.name.removeprefix("tokenized")
        ds = np.memmap(ds_path, dtype=np.uint8, mode="r").view(np.ndarray)
        sa = np.memmap(directory / f"table{suffix}", dtype=np.uint8, mode="r").view(np.ndarray)
        tokens = ds.size // width
        shards.append(_Shard(ds, sa, tokens, sa.size // tokens))
    return shards


def _masks():
    import numpy as np

    # MASK[m] keeps the first m bytes of a big-endian 8-byte key.
    return np.array([0] + [~((1 << (8 * (8 - m))) - 1) & (2**64 - 1) for m in range(1, 9)], dtype=np.uint64)


def _compare(shard: _Shard, ptr, pat, rows, start, nb, mask):
    """sign(ds[ptr : ptr + nb] − pattern) per search, bytes compared as the engine does (a window cut short
    by the end of the file is less); search i's pattern is pat[rows[i], start[i] : start[i] + nb[i]]."""
    import numpy as np

    out = np.zeros(ptr.size, dtype=np.int8)
    todo = np.arange(ptr.size)
    j = 0
    eight = np.arange(8)
    while todo.size:
        m = np.clip(nb[todo] - 8 * j, 0, 8)  # pattern bytes in this 8-byte chunk
        todo, m = todo[m > 0], m[m > 0]
        if not todo.size:
            break
        at = ptr[todo].astype(np.int64) + 8 * j
        pos = at[:, None] + eight  # (rows, 8)
        window = shard.ds[np.minimum(pos, shard.ds.size - 1)]
        window[pos >= shard.ds.size] = 0
        w = window.view(">u8").ravel() & mask[m]
        p = pat[rows[todo, None], start[todo, None] + 8 * j + eight].view(">u8").ravel() & mask[m]
        short = at + m > shard.ds.size
        c = np.where(w < p, -1, np.where(w > p, 1, np.where(short, -1, 0))).astype(np.int8)
        out[todo] = c
        todo = todo[c == 0]
        j += 1
    return out


def _bound(shard: _Shard, pat, rows, start, nb, lo, hi, first: bool, mask):
    """The engine's binary search: the leftmost rank whose suffix is ≥ (first) or > the pattern."""
    import numpy as np

    lo, hi = lo.copy(), hi.copy()
    todo = np.flatnonzero(hi - lo > 1)
    places = np.arange(shard.ptr_size)
    while todo.size:
        mid = (lo[todo] + hi[todo]) >> 1
        raw = np.zeros((todo.size, 8), dtype=np.uint8)
        raw[:, : shard.ptr_size] = shard.sa[mid[:, None] * shard.ptr_size + places]
        ptr = raw.view("<u8").ravel()
        c = _compare(shard, ptr, pat, rows[todo], start[todo], nb[todo], mask)
        right = c < 0 if first else c <= 0
        lo[todo[right]] = mid[right]
        hi[todo[~right]] = mid[~right]
        todo = todo[hi[todo] - lo[todo] > 1]
    return hi


def _find(shards: list[_Shard], pat, rows, start, nb, mask, hints=None):
    """Counts of many patterns and their (first, last) ranks per shard, as the engine's `find`/`_find`."""
    import numpy as np

    total = np.zeros(nb.size, dtype=np.int64)
    segments = []
    for s, shard in enumerate(shards):
        lo, hi = (hints[s][0] - 1, hints[s][1]) if hints else (np.full(nb.size, -1), np.full(nb.size, shard.tokens))
        a = _bound(shard, pat, rows, start, nb, lo, hi, True, mask)
        b = _bound(shard, pat, rows, start, nb, lo, hi, False, mask)
        total += b - a
        segments.append((a, b))
    return total, segments


def _batch_probs(shards: list[_Shard], width: int, queries: list[tuple[list[int], int]]) -> list[InfgramProb]:
    """The engine's `infgram_prob` for each query: binary lifting over the prompt's suffix length,
    a binary search within, then the prompt's and the continuation's counts."""
    import numpy as np

    mask = _masks()
    dtype = np.dtype("<u2") if width == 2 else np.dtype("<u4")
    n = len(queries)
    lengths = np.array([len(p) for p, _ in queries], dtype=np.int64)
    pat = np.zeros((n, (int(lengths.max()) + 1) * width + 8), dtype=np.uint8)  # prompt ⊕ cont, little-endian
    for i, (prompt, cont) in enumerate(queries):
        pat[i, : (len(prompt) + 1) * width] = np.asarray([*prompt, cont], dtype=dtype).view(np.uint8)

    def count(rows, suffix):  # occurrences of the last `suffix` prompt tokens of each row
        total, _ = _find(shards, pat, rows, (lengths[rows] - suffix) * width, suffix * width, mask)
        return total

    lo, hi = np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:  # binary lifting: double the suffix while it occurs
        over = hi[todo] > lengths[todo]
        hi[todo[over]] = lengths[todo[over]] + 1
        todo = todo[~over]
        if not todo.size:
            break
        found = count(todo, hi[todo]) > 0
        todo = todo[found]
        lo[todo], hi[todo] = hi[todo], hi[todo] * 2
    todo = np.flatnonzero(hi - lo > 1)
    while todo.size:  # binary search within [lo, hi)
        mid = (lo[todo] + hi[todo]) >> 1
        found = count(todo, mid) > 0
        lo[todo[found]], hi[todo[~found]] = mid[found], mid[~found]
        todo = todo[hi[todo] - lo[todo] > 1]
    start = (lengths - lo) * width
    everyone = np.arange(n)
    prompt_cnt, segments = _find(shards, pat, everyone, start, lo * width, mask)
    cont_cnt, _ = _find(shards, pat, everyone, start, (lo + 1) * width, mask, hints=segments)
    return [
        InfgramProb(float(c) / p if p else 0.0, int(p), int(c) if p else 0, int(k))
        for p, c, k in zip(prompt_cnt.tolist(), cont_cnt.tolist(), lo.tolist())
    ]


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
