"""∞-gram indexes: geowh's offline build in infini-gram's format, checked against brute force."""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHIA_TOKENIZER

from geowh.errors import InputError
from geowh.index import index as infgram
from geowh.index.build import build_index, pointer_bytes, token_dtype_for
from geowh.index.index import Index

STDLIB_FILES = [
    "argparse.py", "textwrap.py", "difflib.py", "inspect.py", "pathlib.py", "subprocess.py", "typing.py",
    "functools.py", "dataclasses.py", "json/__init__.py", "logging/__init__.py", "collections/__init__.py",
    "enum.py", "shutil.py", "tarfile.py", "zipfile.py", "email/message.py", "http/client.py",
    "urllib/parse.py", "datetime.py",
]


def stdlib_docstrings() -> list[str]:
    """Real English text that ships with Python: the docstrings of some stdlib modules (~250 KB)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for name in STDLIB_FILES:
        tree = ast.parse((root / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if doc := ast.get_docstring(node):
                    docs.append(" ".join(doc.split()))
    return docs


class BruteForce:
    """n-gram counts by scanning the token stream: every document after a separator."""

    def __init__(self, documents: list[list[int]], separator: int):
        self.separator = separator
        stream = []
        for doc in documents:
            stream += [separator] + doc
        self.stream = np.array(stream, dtype=np.int64)

    def count(self, ids: list[int]) -> int:
        n, k = self.stream.size, len(ids)
        if k == 0:
            return n
        if k > n:
            return 0
        hit = self.stream[: n - k + 1] == ids[0]
        for j in range(1, k):
            hit &= self.stream[j : n - k + 1 + j] == ids[j]
        return int(hit.sum())

    def prob(self, prompt: list[int], cont: int) -> tuple[float, int]:
        suffix = 0
        while suffix < len(prompt) and self.count(prompt[len(prompt) - suffix - 1 :]) > 0:
            suffix += 1
        context = prompt[len(prompt) - suffix :]
        return self.count(context + [cont]) / self.count(context), suffix


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = stdlib_docstrings()
    path = tmp_path_factory.mktemp("corpus") / "docstrings.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from geowh.index.build import load_tokenizer

    return load_tokenizer(str(PYTHIA_TOKENIZER))


@pytest.fixture(scope="module")
def brute(corpus, tokenizer):
    lines = [line for line in corpus.read_text(encoding="utf-8").split("\n") if line]
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    return BruteForce([list(x) for x in ids], separator=0xFFFF)


@pytest.fixture(scope="module", params=[1, 3], ids=["1-shard", "3-shards"])
def index(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / f"docstrings-{request.param}"
    build_index([corpus], str(PYTHIA_TOKENIZER), out, shards=request.param)
    return Index(out)


def random_queries(brute: BruteForce, n: int, seed: int) -> list[list[int]]:
    """Spans of the corpus (counts ≥ 1), half of them with the last token replaced (often 0)."""
    rng = random.Random(seed)
    stream = brute.stream.tolist()
    tokens = [t for t in stream[:3000] if t != brute.separator]
    queries = []
    while len(queries) < n:
        length = rng.randint(1, 12)
        start = rng.randrange(0, len(stream) - length)
        span = stream[start : start + length]
        if brute.separator in span:
            continue
        if rng.random() < 0.5:
            span[-1] = rng.choice(tokens)
        queries.append(span)
    return queries


def test_the_index_is_built_in_u16_with_a_meta_file_beside_it(index, brute, corpus):
    meta = json.loads((index.directory / "geowh-index.json").read_text())
    documents = int((brute.stream == 0xFFFF).sum())
    assert meta["token_dtype"] == "u16" and meta["documents"] == documents
    assert meta["tokens"] == brute.stream.size - documents
    assert meta["tokenizer"] == str(PYTHIA_TOKENIZER) and meta["sources"] == [str(corpus.resolve())]
    total = sum((index.directory / f"tokenized.{s}").stat().st_size for s in range(meta["shards"]))
    assert total == 2 * brute.stream.size


def test_counts_equal_brute_force_on_hundreds_of_random_queries(index, brute):
    queries = random_queries(brute, 400, seed=1)
    assert [index.count(q) for q in queries] == [brute.count(q) for q in queries]
    assert sum(brute.count(q) == 0 for q in queries) > 50  # zero counts are exercised too


def test_infgram_prob_and_suffix_length_equal_brute_force(index, brute):
    queries = random_queries(brute, 300, seed=2)
    got = [index.prob(q[:-1], q[-1]) for q in queries]
    want = [brute.prob(q[:-1], q[-1]) for q in queries]
    assert [(p.prob, p.suffix_len) for p in got] == want
    assert len({p.suffix_len for p in got}) > 3


@pytest.mark.parametrize("workers", [1, 2])
def test_batched_queries_equal_the_engine_query_by_query(index, brute, workers, monkeypatch):
    monkeypatch.setattr(infgram, "SHARE_MIN", 20)  # small batches still reach the worker process
    batched_index = Index(index.directory, workers=workers)
    queries = random_queries(brute, 600, seed=5)
    pairs = [(q[:-1], q[-1]) for q in queries] + [([], queries[0][0]), ([0xFFFE], 5)]  # empty prompt, absent token
    batched = batched_index.probs(pairs)
    assert len(pairs) >= infgram.BATCH_MIN
    pool = batched_index._pool
    assert (pool is not None) == (workers > 1)
    assert batched == [index.prob(p, c) for p, c in pairs]  # counts, probabilities and suffix lengths
    assert [(p.prob, p.suffix_len) for p in batched[:-2]] == [brute.prob(q[:-1], q[-1]) for q in queries]
    # A suffix cut short by the end of a shard's file is less than a longer pattern it starts
    # (tokens 0 and 256 begin with a zero byte, what the missing bytes read as).
    tail = np.fromfile(index.directory / "tokenized.0", dtype="<u2")[-3:].tolist()
    ends = [(tail[-k:], c) for k in (1, 2, 3) for c in [*tail, 0, 256]] * (infgram.BATCH_MIN // 15 + 1)
    assert batched_index.probs(ends) == [index.prob(p, c) for p, c in ends]
    assert batched_index._pool is pool  # the worker processes serve the index's every batch


def test_batched_queries_on_an_index_shorter_than_one_8_byte_read_equal_the_engine(tmp_path):
    (tmp_path / "c.txt").write_text("alpha\n")  # one token: 4 bytes of text, a 2-byte suffix array
    build_index([tmp_path / "c.txt"], str(PYTHIA_TOKENIZER), tmp_path / "i")
    index = Index(tmp_path / "i", workers=1)
    t = index.tokenize("alpha")
    assert (tmp_path / "i" / "tokenized.0").stat().st_size < 8 and len(t) == 1
    pairs = [(t, t[0]), ([], t[0]), (t * 3, 5), ([0xFFFE], t[0]), (t, 0xFFFE)] * (infgram.BATCH_MIN // 5 + 1)
    assert index.probs(pairs) == [index.prob(p, c) for p, c in pairs]


def test_a_suffix_cut_short_by_the_end_of_the_file_sorts_before_every_longer_pattern(tmp_path):
    # " red" ends the file and starts five other suffixes: the batched search must read the
    # missing bytes as less than any token that could follow, as the engine does.
    (tmp_path / "c.txt").write_text("a red fox\na red cat\na red dog\na red hen\na red owl\na big red\n")
    build_index([tmp_path / "c.txt"], str(PYTHIA_TOKENIZER), tmp_path / "i")
    index = Index(tmp_path / "i", workers=1)
    stream = np.fromfile(tmp_path / "i" / "tokenized.0", dtype="<u2").tolist()
    vocab = sorted(set(stream) - {0xFFFF}) + [0, 256]
    pairs = [(stream[-k:], c) for k in (1, 2, 3) for c in vocab] * (infgram.BATCH_MIN // 30 + 1)
    assert index.probs(pairs) == [index.prob(p, c) for p, c in pairs]


def test_a_script_without_a_main_guard_gets_one_clear_error_from_worker_processes(index, tmp_path):
    # Spawned workers re-import the script, which here starts a batch again and dies doing so.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\nfrom geowh.errors import GeowhError\nfrom geowh.index import index as infgram\n"
        "infgram.SHARE_MIN = 100\n"
        f"index = infgram.Index({str(index.directory)!r}, workers=2)\n"
        "try:\n    index.probs([([5, 6], 7)] * 300)\n"
        "except GeowhError as e:\n    print('ERROR', e)\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "ERROR" in done.stdout and '__name__ == "__main__"' in done.stdout and "workers=1" in done.stdout


def test_a_batch_leaves_the_garbage_collector_as_it_found_it(index, brute):
    import gc

    pairs = [(q[:-1], q[-1]) for q in random_queries(brute, infgram.BATCH_MIN, seed=7)]
    index.probs(pairs)  # the collector is paused while the answers are built
    assert gc.isenabled()
    gc.disable()
    try:
        index.probs(pairs)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_continuation_probs_score_every_answer_token_on_threads(index, brute):
    prompt, target = brute.stream[1:9].tolist(), brute.stream[9:13].tolist()
    got = index.map(lambda _: index.continuation_probs(prompt, target), range(4))
    want = [brute.prob(prompt + target[:i], t) for i, t in enumerate(target)]
    for probs in got:
        assert [(p.prob, p.suffix_len) for p in probs] == want


def test_query_reports_tokens_count_prob_and_suffix_length(index, tokenizer, brute):
    text = "Return a new"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    result = index.query(text)
    prob, suffix = brute.prob(ids[:-1], ids[-1])
    assert result == {"tokens": ids, "count": brute.count(ids), "prob": prob, "suffix_len": suffix}
    assert result["count"] > 0


def test_an_ngram_spanning_two_documents_is_not_counted(tmp_path):
    tok = str(PYTHIA_TOKENIZER)
    corpus = tmp_path / "two.jsonl"
    corpus.write_text(
        json.dumps({"text": "alpha beta gamma"}) + "\n" + json.dumps({"text": " delta epsilon"}) + "\n"
    )
    build_index([corpus], tok, tmp_path / "i")
    index = Index(tmp_path / "i")
    end, start = index.tokenize(" gamma"), index.tokenize(" delta")
    assert index.count(end) == 1 and index.count(start) == 1
    assert index.count(end + start) == 0
    # and P∞ backs off instead of reading across the boundary
    p = index.prob(index.tokenize("alpha beta gamma"), start[0])
    assert p.prob == 0.0 and p.suffix_len == 3


def test_the_tables_are_byte_identical_to_upstreams_rust_indexer(index, tmp_path):
    import infini_gram

    binary = Path(infini_gram.__file__).parent / "rust_indexing"
    if not os.access(binary, os.X_OK):
        pytest.skip("infini-gram's rust_indexing binary is not executable here")
    ds = index.directory / "tokenized.0"
    size, ratio = ds.stat().st_size, pointer_bytes(ds.stat().st_size)
    parts, merged, table = tmp_path / "parts", tmp_path / "merged", tmp_path / "table.ref"
    parts.mkdir(), merged.mkdir()
    common = ["--data-file", str(ds), "--ratio", str(ratio), "--token-width", "2"]
    for step in (
        ["make-part", "--parts-dir", str(parts), "--start-byte", "0", "--end-byte", str(size)],
        ["merge", "--parts-dir", str(parts), "--merged-dir", str(merged), "--num-threads", "1", "--hacksize", "100000"],
        ["concat", "--merged-dir", str(merged), "--merged-file", str(table), "--num-threads", "1"],
    ):
        subprocess.run([str(binary), *step, *common], check=True, capture_output=True)
    assert table.read_bytes() == (index.directory / "table.0").read_bytes()


def test_a_vocabulary_over_65535_ids_gives_a_u32_index_that_still_counts_right(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(tmp_path / "tok")
    rng = random.Random(0)
    docs = [[rng.choice([1, 2, 65_535, 65_536, 69_999]) for _ in range(rng.randint(1, 30))] for _ in range(200)]
    (tmp_path / "c.txt").write_text("\n".join(" ".join(f"w{t}" for t in d) for d in docs) + "\n")
    build_index([tmp_path / "c.txt"], str(tmp_path / "tok"), tmp_path / "i")
    index = Index(tmp_path / "i")
    assert index.meta.token_dtype == "u32" and token_dtype_for(50_277) == "u16"
    brute = BruteForce(docs, separator=0xFFFFFFFF)
    queries = random_queries(brute, 300, seed=3)
    for q in queries[:150]:
        assert index.count(q) == brute.count(q)
        got = index.prob(q[:-1], q[-1])
        assert (got.prob, got.suffix_len) == brute.prob(q[:-1], q[-1])
    monkeypatch.setattr(infgram, "SHARE_MIN", 100)  # a share goes to a worker process too
    batched = Index(tmp_path / "i", workers=2).probs([(q[:-1], q[-1]) for q in queries])
    assert [(p.prob, p.suffix_len) for p in batched] == [brute.prob(q[:-1], q[-1]) for q in queries]


def test_a_folder_named_like_an_engine_file_still_opens(index, tmp_path):
    moved = tmp_path / "my_table_offsets"
    shutil.copytree(index.directory, moved)
    assert Index(moved).count(index.tokenize("Return the")) == index.count(index.tokenize("Return the"))


def test_unusable_input_raises_an_input_error_not_a_crash(index, tmp_path, corpus):
    with pytest.raises(InputError, match="geowh index build"):
        Index(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="--index-tokenizer"):
        Index(tmp_path / "empty")
    with pytest.raises(InputError, match="tokenized"):
        Index(tmp_path / "empty", tokenizer=str(PYTHIA_TOKENIZER))
    with pytest.raises(InputError, match="not empty"):
        build_index([corpus], str(PYTHIA_TOKENIZER), index.directory)
    with pytest.raises(InputError, match="outside"):
        index.count([0xFFFF])
    with pytest.raises(InputError, match="outside"):  # a batch checks its ids as one query does
        index.probs([([5], 6)] * infgram.BATCH_MIN + [([0xFFFF], 6)])
    with pytest.raises(InputError, match="workers must be at least 1"):
        Index(index.directory, workers=0)
    with pytest.raises(InputError, match="tokenizes to nothing"):
        index.query("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        build_index([bad], str(PYTHIA_TOKENIZER), tmp_path / "half")
    assert not (tmp_path / "half").exists()  # no half-built index left to be mistaken for one
    one = tmp_path / "one.txt"
    one.write_text("one document\n")
    with pytest.raises(InputError, match="--shards 1"):
        build_index([one], str(PYTHIA_TOKENIZER), tmp_path / "x", shards=2)


def test_an_index_built_elsewhere_opens_with_its_tokenizer_named(index, tmp_path):
    bare = tmp_path / "upstream"
    shutil.copytree(index.directory, bare, ignore=shutil.ignore_patterns("geowh-index.json"))
    other = Index(bare, tokenizer=str(PYTHIA_TOKENIZER))
    assert other.meta.documents == index.meta.documents and other.meta.tokens == index.meta.tokens
    assert other.query("Return the") == index.query("Return the")


def test_cli_builds_queries_and_records_the_index(cli, corpus, tmp_path):
    db, out = tmp_path / "w.duckdb", tmp_path / "idx"
    built = cli(["index", "build", corpus, "--tokenizer", PYTHIA_TOKENIZER, "--out", out, "--db", db, "--json"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["documents"] > 1000
    queried = cli(["index", "query", out, "Return the", "--json"])
    assert queried.exit_code == 0, queried.output
    assert set(json.loads(queried.stdout)) == {"tokens", "count", "prob", "suffix_len"}
    from geowh.warehouse import Warehouse

    row = Warehouse(db).table("indexes").row(0, named=True)
    assert row["index_dir"] == str(out.resolve()) and row["tokenizer"] == str(PYTHIA_TOKENIZER)
    bad = cli(["index", "query", tmp_path / "nope", "x"])
    assert bad.exit_code == 1 and "error" in bad.output


@pytest.mark.parametrize("damage", ["empty table", "cut table", "cut offsets", "header"])
def test_an_index_whose_files_do_not_match_their_header_is_refused_not_answered_with_zero(index, tmp_path, cli, damage):
    # issue 18: an index whose table.0 was empty answered count 0 with exit 0
    copy = tmp_path / "damaged"
    shutil.copytree(index.directory, copy)
    if damage == "empty table":
        (copy / "table.0").write_bytes(b"")
    elif damage == "cut table":
        data = (copy / "table.0").read_bytes()
        (copy / "table.0").write_bytes(data[: len(data) // 2])
    elif damage == "cut offsets":
        data = (copy / "offset.0").read_bytes()
        (copy / "offset.0").write_bytes(data[:-8])
    else:
        meta = json.loads((copy / "geowh-index.json").read_text())
        (copy / "geowh-index.json").write_text(json.dumps(meta | {"documents": meta["documents"] + 1}))
    with pytest.raises(InputError, match="rebuild the index"):
        Index(copy)
    result = cli(["index", "query", copy, "Return the"])
    assert result.exit_code == 1 and "rebuild the index" in result.output and "Traceback" not in result.output
