"""∞-gram queries and QA scoring: geowh against the plain ways of doing the same.

    python bench/infgram.py [--work DIR] [--tokens 20000000] [--queries 5000] [--batch-queries 50000]
                            [--repeats 5] [--items 2000] [--batch-size 32] [--compare-build] [--skip-scoring]

1. Corpus: real local text — the Python sources (code and docstrings) of the standard library and
   of the installed packages, one document per file, in a fixed order, until about --tokens
   GPT-NeoX tokens. Nothing is repeated unless the machine holds too little text (then it says so).
2. Index: `geowh index build` (pydivsufsort). With --compare-build, upstream's bundled Rust
   suffix-array builder runs on the same tokenized file too and the tables are compared.
3. Queries: P∞(next | prompt) for random spans of the corpus (prompt 1-30 tokens, the true next
   token or a random one). Baseline: the engine opened with infini-gram's default prefetch depths,
   one query at a time. geowh: prefetch depths 0, one thread (= per core), then one thread per core;
   then `Index.probs`, --batch-queries searched at once, by this process alone (1 worker) and
   shared with worker processes (one worker per core), timed in turns; the ratio of the two is
   the scaling, printed with the share of the cores that other processes used meanwhile.
4. Scoring: log P(answer | prompt) of --items QA items (built from the corpus's docstrings) with a
   random-weight GPT-NeoX of Pythia-70M's shape: one forward per batch against one per item.

The index and corpus stay in --work (default $GEOWH_HOME/bench-infgram) for reruns. Prints a
table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from geowh.index.build import build_index, pointer_bytes
from geowh.index.index import Index
from geowh.settings import settings

TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b"
CHARS_PER_TOKEN = 4.0  # GPT-NeoX on Python sources gives ~3.6; the build reports the true count


def source_files() -> list[Path]:
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    files = []
    for root in roots:
        files += sorted(p for p in root.rglob("*.py") if p.is_file() and "site-packages" not in p.relative_to(root).parts)
    return files


def write_corpus(path: Path, tokens: int) -> dict:
    """One JSON line per source file, until about `tokens` tokens' worth of characters."""
    want = int(tokens * CHARS_PER_TOKEN)
    chars, docs, passes = 0, 0, 0
    files = source_files()
    with open(path, "w", encoding="utf-8") as f:
        while chars < want:  # a second pass (shuffled) only when the machine holds too little text
            order = files if passes == 0 else random.Random(passes).sample(files, len(files))
            passes += 1
            for p in order:
                try:
                    text = p.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                if not text.strip():
                    continue
                f.write(json.dumps({"text": text}) + "\n")
                chars += len(text)
                docs += 1
                if chars >= want:
                    break
    repeated = passes - 1
    return {"documents": docs, "chars": chars, "source_files": len(files), "repeated_passes": repeated}


def rust_build_seconds(ds: Path, work: Path) -> tuple[float, bool]:
    import infini_gram

    binary = Path(infini_gram.__file__).parent / "rust_indexing"
    size, ratio = ds.stat().st_size, pointer_bytes(ds.stat().st_size)
    parts, merged, table = work / "rust-parts", work / "rust-merged", work / "rust-table"
    for d in (parts, merged):
        subprocess.run(["rm", "-rf", str(d)], check=True)
        d.mkdir()
    common = ["--data-file", str(ds), "--ratio", str(ratio), "--token-width", "2"]
    threads = str(os.cpu_count() or 1)
    start = time.perf_counter()
    for step in (
        ["make-part", "--parts-dir", str(parts), "--start-byte", "0", "--end-byte", str(size)],
        ["merge", "--parts-dir", str(parts), "--merged-dir", str(merged), "--num-threads", threads, "--hacksize", "100000"],
        ["concat", "--merged-dir", str(merged), "--merged-file", str(table), "--num-threads", threads],
    ):
        subprocess.run([str(binary), *step, *common], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    same = table.read_bytes() == (ds.parent / "table.0").read_bytes()
    table.unlink()
    subprocess.run(["rm", "-rf", str(parts), str(merged)], check=True)
    return seconds, same


def random_queries(index_dir: Path, n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    stream = np.memmap(index_dir / "tokenized.0", dtype="<u2", mode="r")
    rng = random.Random(seed)
    queries = []
    while len(queries) < n:
        length = rng.randint(1, 30)
        start = rng.randrange(0, stream.size - length - 1)
        span = [int(t) for t in stream[start : start + length + 1]]
        if 0xFFFF in span:
            continue
        cont = span[-1] if rng.random() < 0.5 else int(stream[rng.randrange(stream.size)])
        if cont == 0xFFFF:
            continue
        queries.append((span[:-1], cont))
    return queries


def time_queries(fn, queries, threads: int = 1) -> tuple[float, list]:
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    if threads == 1:
        out = [fn(q) for q in queries]
    else:
        with ThreadPoolExecutor(threads) as pool:
            out = list(pool.map(fn, queries))
    return len(queries) / (time.perf_counter() - start), out


def cpu_ticks() -> tuple[int, int, int] | None:
    """(machine's busy, machine's total, this process tree's) CPU ticks, from /proc (None elsewhere):
    on a shared machine, what other processes took while a row was timed says what the row means."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        ours, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            with open(f"/proc/{pid}/stat") as f:
                ours += sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13])  # utime, stime
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks[:8]) - idle, sum(ticks[:8]), ours


def others_share(before, after) -> float | None:
    """The share of all cores' time that other processes used between two `cpu_ticks`."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return max((after[0] - before[0]) - (after[2] - before[2]), 0) / (after[1] - before[1])


def qa_items(index: Index, n: int, seed: int = 0):
    """Questions and answers cut from docstring-like lines of the corpus (real text)."""
    from geowh.ingest.measurements.tasks import QAItem

    rng = random.Random(seed)
    lines = []
    with open(index.meta.sources[0], encoding="utf-8") as f:
        for row in f:
            for line in json.loads(row)["text"].splitlines():
                words = line.strip().strip('"').split()
                if 8 <= len(words) <= 30 and words[0][:1].isupper() and all(w.isascii() for w in words):
                    lines.append(words)
            if len(lines) > 20 * n:
                break
    rng.shuffle(lines)
    items = []
    for i, words in enumerate(lines[:n]):
        cut = rng.randint(4, len(words) - 2)
        k = rng.randint(1, min(4, len(words) - cut))
        items.append(QAItem(str(i), " ".join(words[:cut]), " ".join(words[cut : cut + k])))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=settings().home / "bench-infgram")
    parser.add_argument("--tokens", type=int, default=20_000_000)
    parser.add_argument("--queries", type=int, default=5000, help="Queries for the engine's rows (one at a time).")
    parser.add_argument("--batch-queries", type=int, default=50_000, help="Queries per Index.probs batch.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed Index.probs batches per row (median).")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--compare-build", action="store_true", help="Also time upstream's Rust suffix-array build.")
    parser.add_argument("--skip-scoring", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    report: dict = {"cores": cores, "load_before": round(os.getloadavg()[0], 1)}
    args.work.mkdir(parents=True, exist_ok=True)
    corpus, index_dir = args.work / "corpus.jsonl", args.work / f"index-{args.tokens}"

    # 1-2. corpus and index (reused when present)
    if not (index_dir / "geowh-index.json").exists():
        report["corpus"] = write_corpus(corpus, args.tokens)
        subprocess.run(["rm", "-rf", str(index_dir)], check=True)
        meta = build_index([corpus], str(TOKENIZER), index_dir)
        report["build_seconds"] = meta.seconds
    index = Index(index_dir)
    report |= {"tokens": index.meta.tokens, "documents": index.meta.documents}
    if args.compare_build:
        rust, same = rust_build_seconds(index_dir / "tokenized.0", args.work)
        start = time.perf_counter()
        from geowh.index.build import write_suffix_array

        write_suffix_array(index_dir / "tokenized.0", args.work / "sa-again", 2)
        ours = time.perf_counter() - start
        (args.work / "sa-again").unlink()
        report["suffix_array"] = {"geowh_s": round(ours, 2), "rust_s": round(rust, 2),
                                  "speedup": round(rust / ours, 1), "identical": same}

    # 3. queries
    from infini_gram.engine import InfiniGramEngine

    queries = random_queries(index_dir, args.queries)
    baseline = InfiniGramEngine(index_dir=str(index_dir.resolve()), eos_token_id=0, vocab_size=50277)  # default prefetch
    base_fn = lambda q: baseline.infgram_prob(prompt_ids=q[0], cont_id=q[1])  # noqa: E731
    ours_fn = lambda q: index.prob(q[0], q[1])  # noqa: E731
    for fn in (base_fn, ours_fn):  # warm the page cache
        time_queries(fn, queries[:300])
    base_qps, base_out = time_queries(base_fn, queries)
    one_qps, one_out = time_queries(ours_fn, queries)
    many_qps, _ = time_queries(ours_fn, queries, threads=cores)
    agree = all(b["prob"] == max(o.prob, 0.0) and b["suffix_len"] == o.suffix_len for b, o in zip(base_out, one_out))
    # Index.probs: whole batches at once, vectorized, in this process alone (1 worker) and shared
    # with worker processes (one per core). A bigger batch than the engine's, timed several times
    # (median), the two settings taking turns so that a change in the machine's load hits both.
    batch = queries + random_queries(index_dir, max(args.batch_queries - len(queries), 0), seed=1)
    batch_indexes = {workers: Index(index_dir, workers=workers) for workers in sorted({1, cores})}
    first_s, rates = {}, {workers: [] for workers in batch_indexes}
    for workers, batch_index in batch_indexes.items():
        start = time.perf_counter()
        batched_out = batch_index.probs(batch)  # opens the memory maps, starts the worker processes
        first_s[workers] = time.perf_counter() - start
        agree = agree and batched_out[: len(queries)] == one_out
    ticks = cpu_ticks()
    for _ in range(args.repeats):
        for workers, batch_index in batch_indexes.items():
            start = time.perf_counter()
            batch_index.probs(batch)
            rates[workers].append(len(batch) / (time.perf_counter() - start))
    others = others_share(ticks, cpu_ticks())
    batched_qps = {workers: float(np.median(r)) for workers, r in rates.items()}
    report["queries"] = {
        "n": len(queries), "baseline_default_prefetch_qps": round(base_qps), "geowh_1_thread_qps": round(one_qps),
        f"geowh_{cores}_threads_qps": round(many_qps), "ratio_1_thread": round(one_qps / base_qps, 2),
        "batch_n": len(batch), "batch_repeats": args.repeats,
        "geowh_batched_1_worker_qps": round(batched_qps[1]), f"geowh_batched_{cores}_workers_qps": round(batched_qps[cores]),
        "batched_first_call_s": {str(w): round(s, 2) for w, s in first_s.items()},
        "batched_rates_qps": {str(w): [round(x) for x in r] for w, r in rates.items()},
        "batched_others_cpu_share": None if others is None else round(others, 3),
        "batched_ratio_to_baseline": round(batched_qps[cores] / base_qps, 2),
        "batched_worker_scaling": round(batched_qps[cores] / batched_qps[1], 2),
        "results_agree": agree, "mean_suffix_len": round(float(np.mean([o.suffix_len for o in one_out])), 2),
    }

    # 4. the two sides of memorization on the same items
    if not args.skip_scoring:
        import torch

        from geowh.ingest.measurements.memorization import answer_logliks, infgram_side

        items = qa_items(index, args.items)
        start = time.perf_counter()
        infgram_side(index, "bench", items)
        report["infgram_side_items_per_s"] = round(len(items) / (time.perf_counter() - start), 1)

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import tiny_model, tokenizer

        model = tiny_model(layers=6, d=512, heads=8)  # Pythia-70M's shape, random weights
        tok = tokenizer()
        tok.pad_token = tok.eos_token
        torch.set_num_threads(cores)
        start = time.perf_counter()
        batched = answer_logliks(model, tok, items, batch_size=args.batch_size)
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        single = answer_logliks(model, tok, items, batch_size=1)
        single_s = time.perf_counter() - start
        diff = max(abs(a[0] - b[0]) for a, b in zip(batched, single))
        report["scoring"] = {
            "items": len(items), "model": "gpt-neox 6x512 (pythia-70m shape), float32, cpu",
            "batched_s": round(batched_s, 2), "per_item_s": round(single_s, 2),
            "batched_items_per_s": round(len(items) / batched_s, 1), "per_item_items_per_s": round(len(items) / single_s, 1),
            "speedup": round(single_s / batched_s, 2), "max_abs_diff": diff, "batch_size": args.batch_size,
        }

    report["load_after"] = round(os.getloadavg()[0], 1)
    q = report["queries"]
    print(f"load average {report['load_before']} before, {report['load_after']} after, on {cores} cores")
    print(f"index: {report['tokens']:,} tokens, {report['documents']:,} documents"
          + (f", built in {report['build_seconds']:.1f} s" if "build_seconds" in report else ""))
    if "corpus" in report:
        print(f"corpus: {report['corpus']}")
    if "suffix_array" in report:
        s = report["suffix_array"]
        print(f"suffix array: geowh {s['geowh_s']} s, upstream rust {s['rust_s']} s ({s['speedup']}x), identical={s['identical']}")
    print(f"∞-gram queries/s: baseline (default prefetch, 1 thread) {q['baseline_default_prefetch_qps']:,}  "
          f"geowh 1 thread {q['geowh_1_thread_qps']:,} ({q['ratio_1_thread']}x)  "
          f"geowh {cores} threads {q[f'geowh_{cores}_threads_qps']:,}  agree={q['results_agree']}")
    print(f"batched (Index.probs, {q['batch_n']:,} queries, median of {q['batch_repeats']}): "
          f"1 worker {q['geowh_batched_1_worker_qps']:,}  {cores} workers {q[f'geowh_batched_{cores}_workers_qps']:,} "
          f"({q['batched_worker_scaling']}x on {cores} workers, {q['batched_ratio_to_baseline']}x the baseline; "
          f"first call {q['batched_first_call_s']} s)")
    if q["batched_others_cpu_share"] is not None:
        print(f"  other processes used {q['batched_others_cpu_share']:.0%} of the {cores} cores' time meanwhile")
    if "scoring" in report:
        s = report["scoring"]
        print(f"scoring {s['items']} items: batched {s['batched_s']} s, one forward per item {s['per_item_s']} s "
              f"({s['speedup']}x), max |Δ log p| {s['max_abs_diff']:.2e}; ∞-gram side {report['infgram_side_items_per_s']} items/s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
