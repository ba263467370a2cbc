"""Batched queries: the engine's search, vectorized over queries, and the worker processes that share a batch.

`Index.probs` (index/index.py) calls `batch_probs` for its own share and `share_probs` in each
worker process (started with `open_worker`), over numpy memory maps of the index's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    def of(cls, data, step: int, order: str) -> _Windows:
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
class Shard:
    size: int  # bytes of tokenized.s
    tokens: int  # suffix-array entries
    text: _Windows  # tokenized.s from any byte on, big-endian
    pointers: _Windows  # table.s entries, little-endian, to be masked to ptr_mask
    ptr_mask: int


def open_shards(directory: Path, width: int) -> list[Shard]:
    import numpy as np

    shards = []
    for ds_path in sorted(directory.glob("tokenized.*")):
        suffix = ds_path.name.removeprefix("tokenized")
        ds = np.memmap(ds_path, dtype=np.uint8, mode="r").view(np.ndarray)
        sa = np.memmap(directory / f"table{suffix}", dtype=np.uint8, mode="r").view(np.ndarray)
        tokens = ds.size // width
        ptr_size = sa.size // tokens
        shards.append(Shard(ds.size, tokens, _Windows.of(ds, 1, ">"), _Windows.of(sa, ptr_size, "<"),
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
    def of(cls, words: _Windows, offset, nb, masks) -> _Patterns:
        import numpy as np

        head_mask = masks[np.minimum(nb, 8)]
        return cls(words, offset, nb, words[offset] & head_mask, head_mask)

    def take(self, sel) -> _Patterns:
        return _Patterns(self.words, self.offset[sel], self.nb[sel], self.head[sel], self.head_mask[sel])


def _precedes(shard: Shard, ranks, pats: _Patterns, upper: bool, masks):
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


def _search(shard: Shard, pats: _Patterns, base, n, upper: bool, masks):
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


def batch_probs(shards: list[Shard], width: int, ids, lengths):
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


_WORKER: dict[str, Any] = {}  # in a worker process: its own memory maps of the index's files


def open_worker(directory: str, width: int) -> None:
    _WORKER.update(shards=open_shards(Path(directory), width), width=width)


def share_probs(ids, lengths):
    """`batch_probs` of one share of a batch, in a worker process."""
    return batch_probs(_WORKER["shards"], _WORKER["width"], ids, lengths)
