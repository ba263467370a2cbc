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
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from geowh.errors import InputError
from geowh.outputs import check_output, output_path
from geowh.progress import Event, Progress, silent
from geowh.texts import SUFFIXES, iter_documents

META_FILE = "geowh-index.json"


INDEX_VERSION = 4


# The engine sorts every file of an index directory by these substrings of its full path.
ENGINE_MARKERS = ("tokenized", "table", "offset", "metadata", "metaoff")


TOKENIZE_BATCH = 1024


SA_WRITE_CHUNK = 1 << 22  # suffix-array entries converted and written at a time




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


# -- tokenizers --------------------------------------------------------------------------------


def load_tokenizer(name_or_path: str | Path, **kwargs):
    """A Hugging Face tokenizer by hub id or local folder (`kwargs`: `from_pretrained`'s, such as a
    revision); never adds special tokens for us. The one place geowh loads a tokenizer: a
    checkpoint's (ingest/sources/models.py) comes through here too."""
    if not Path(name_or_path).expanduser().exists():
        from geowh.ingest.sources.series import require_hub

        # One line at once, not a minute of retries; before importing transformers, which alone
        # takes seconds.
        require_hub(f"load the tokenizer {name_or_path}")
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    except Exception as e:  # hub, file and parsing errors come in many types
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"cannot load the tokenizer {str(name_or_path)!r} ({why}); "
            "give a local folder with tokenizer.json or a hub id that is in the local cache"
        ) from e


def encode_batch(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts, no special tokens; the Rust backend's fast path when there is one."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tok(texts, add_special_tokens=False)["input_ids"]


def token_dtype_for(vocab_size: int) -> str:
    """u16 when every id fits below the 0xFFFF separator, else u32."""
    return "u16" if vocab_size <= 0xFFFF else "u32"


def numpy_dtype(token_dtype: str):
    import numpy as np

    return np.dtype("<u2") if token_dtype == "u16" else np.dtype("<u4")


# -- building ----------------------------------------------------------------------------------


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
    progress: Progress = silent,
) -> IndexMeta:
    """Tokenize `corpus` and write an infini-gram (version 4) index into `out`.

    Documents go to shards round-robin, as upstream's indexer does. Empty documents are skipped.
    A build that fails leaves no folder behind. `progress` hears `bar` events: "index: tokenize"
    (bytes read of the corpus's) and "index: suffix array" (shards done).
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


def _build(files: list[Path], tok, tokenizer: str, out: Path, shards: int, progress: Progress,
           start: float) -> IndexMeta:
    import numpy as np

    vocab = len(tok)
    token_dtype = token_dtype_for(vocab)
    dtype = numpy_dtype(token_dtype)
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
            progress(Event("bar", "index: tokenize", done=min(done_bytes, total_bytes), total=total_bytes))
    finally:
        for f in ds_files + od_files:
            f.close()
    if documents == 0:
        raise InputError(f"the corpus ({len(files)} file(s)) holds no non-empty document")
    if documents < shards:
        raise InputError(f"{documents} document(s) cannot fill {shards} shards: use --shards {documents} or fewer")
    for s in range(shards):
        progress(Event("bar", "index: suffix array", done=s, total=shards))
        write_suffix_array(out / f"tokenized.{s}", out / f"table.{s}", dtype.itemsize)
    progress(Event("bar", "index: suffix array", done=shards, total=shards))
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


# -- reading an index folder -------------------------------------------------------------------


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
    width = numpy_dtype(token_dtype).itemsize
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


def check_files(directory: Path, meta: IndexMeta) -> None:
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
        # Exact sizes: an empty or cut table answered every count with 0 and exit 0.
        expected = ds_size // meta.width * pointer_bytes(ds_size)
        if sa.stat().st_size != expected or od.stat().st_size % 8 or od.stat().st_size == 0:
            raise InputError(
                f"{sa} ({sa.stat().st_size:,} bytes) or {od} ({od.stat().st_size:,}) does not match {ds.name}: its "
                f"suffix array must be {expected:,} bytes (truncated or damaged build?); rebuild the index"
            )
    header = {"shards": len(shards), "documents": sum((directory / f"offset{d.name.removeprefix('tokenized')}").stat().st_size
                                                      for d in shards) // 8}
    header["tokens"] = sum(d.stat().st_size for d in shards) // meta.width - header["documents"]
    differs = [f"{k} {getattr(meta, k):,} (files: {v:,})" for k, v in header.items() if getattr(meta, k) != v]
    if differs:
        raise InputError(f"{directory}: the files do not hold what {META_FILE} records ({', '.join(differs)}): "
                         "a file was cut, added or replaced; rebuild the index")
