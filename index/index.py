"""The `Index` object: an opened ∞-gram index and its tokenizer, queried with infini-gram's engine
(one query at a time) or, for a batch, with index/batch.py's vectorized search.
"""

from __future__ import annotations

import gc
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from geowh.errors import GeowhError, InputError
from geowh.index.batch import Shard, batch_probs, open_shards, open_worker, share_probs
from geowh.index.build import ENGINE_MARKERS, check_files, load_tokenizer, numpy_dtype, read_meta
from geowh.warehouse import Warehouse, as_warehouse


@dataclass(frozen=True, slots=True)  # slots: a batch builds tens of thousands
class InfgramProb:
    """P∞(cont | prompt): the longest suffix of the prompt found in the corpus decides."""

    prob: float  # cont_cnt / prompt_cnt; 0 when the continuation never follows that suffix
    prompt_cnt: int  # occurrences of the suffix used
    cont_cnt: int  # occurrences of the suffix followed by the continuation
    suffix_len: int  # tokens of the prompt's suffix used (0 = unigram)


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
        check_files(self.directory, self.meta)
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
        self._shards: list[Shard] | None = None  # numpy views of the files, opened by `probs`

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
            self._shards = open_shards(self.directory, self.meta.width)
        n = len(queries)
        shares = max(1, min(self.workers, n // SHARE_MIN))
        # This process also turns its share into arrays and builds every answer: it searches less.
        own = round(n / ((shares - 1) * (1 + HOME_COST) + 1))
        cuts = [own + (n - own) * i // (shares - 1) for i in range(shares)] if shares > 1 else [n]
        sent = [self._workers().submit(share_probs, *self._flat(queries[a:b])) for a, b in zip(cuts, cuts[1:])]
        out = _answers(*batch_probs(self._shards, self.meta.width, *self._flat(queries[:own])))
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
        return ids.astype(numpy_dtype(self.meta.token_dtype)), lengths

    def _workers(self):
        """The worker processes (workers − 1 of them), started once: spawned, never forked, since
        the caller may hold torch or the engine's threads."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.workers - 1, mp_context=multiprocessing.get_context("spawn"),
                initializer=open_worker, initargs=(str(self.directory), self.meta.width),
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


BATCH_MIN = 32  # below this the engine's per-query calls are quicker than numpy's per-step overhead (measured)


SHARE_MIN = 1024  # queries per process below which sending a share costs more than it saves


HOME_COST = 0.06  # a query's arrays and InfgramProb, in searches of one (measured: ~1.2 µs of ~20)


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


def _checked(result: Any) -> dict:
    """The engine reports bad input as {'error': ...} instead of raising."""
    if isinstance(result, dict) and "error" in result:
        raise InputError(f"infini-gram refused the query: {result['error']}")
    return result


def index_row(index: Index | str | Path) -> dict[str, Any]:
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
