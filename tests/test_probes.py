"""Probe sets: local files, the text cache, deterministic sampling and the probe's identity."""

from __future__ import annotations

import json

import polars as pl
import pytest
from tiny import english_docs, tokenizer

from geowh.errors import InputError
from geowh.ingest.sources.probes import load_texts, tokenize_probe


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def docs():
    return english_docs(300)


def test_txt_jsonl_and_parquet_give_the_same_documents(tmp_path, docs):
    (tmp_path / "p.txt").write_text("\n".join(docs[:50]) + "\n\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[:50])))
    pl.DataFrame({"text": docs[:50]}).write_parquet(tmp_path / "p.parquet")
    texts = [load_texts(tmp_path / f"p.{s}").texts for s in ("txt", "jsonl", "parquet")]
    assert texts[0] == texts[1] == texts[2] == tuple(docs[:50])


def test_bad_probe_files_are_clear_errors(tmp_path):
    (tmp_path / "p.csv").write_text("a,b")
    (tmp_path / "p.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(InputError, match="must be .txt"):
        load_texts(tmp_path / "p.csv")
    with pytest.raises(InputError, match='`text` field'):
        load_texts(tmp_path / "p.jsonl")
    with pytest.raises(InputError, match="unknown probe"):
        load_texts("fineweeb")


def test_sampling_is_deterministic_and_uses_all_documents_when_n_is_large(tmp_path, docs, tok):
    (tmp_path / "p.txt").write_text("\n".join(docs))
    texts = load_texts(tmp_path / "p.txt")
    a = tokenize_probe(texts, tok, n=100, max_len=64, min_len=32, seed=0)
    b = tokenize_probe(texts, tok, n=100, max_len=64, min_len=32, seed=0)
    c = tokenize_probe(texts, tok, n=100, max_len=64, min_len=32, seed=1)
    assert a.ids == b.ids and a.id == b.id
    assert a.ids != c.ids and a.id != c.id
    assert len(a) == 100 and max(len(s) for s in a.ids) == 64

    usable = [d for d in docs if len(tok(d)["input_ids"]) > 32]
    everything = tokenize_probe(texts, tok, n=10**6, max_len=64, min_len=32)
    assert len(everything) == len(usable) < len(docs)  # short texts dropped, all the others kept
    assert everything.ids[0] == tuple(tok(usable[0])["input_ids"][:64])  # in file order
    assert everything.row["sequences"] == len(usable) and everything.row["min_len"] == 32


def test_the_probe_id_changes_with_texts_and_length_settings(tmp_path, docs, tok):
    (tmp_path / "a.txt").write_text("\n".join(docs[:80]))
    (tmp_path / "b.txt").write_text("\n".join(docs[1:81]))
    a = load_texts(tmp_path / "a.txt")
    base = tokenize_probe(a, tok, n=50, max_len=64, min_len=10)
    assert tokenize_probe(a, tok, n=50, max_len=64, min_len=10).id == base.id
    assert tokenize_probe(a, tok, n=50, max_len=32, min_len=10).id != base.id
    assert tokenize_probe(a, tok, n=50, max_len=64, min_len=11).id != base.id
    b = load_texts(tmp_path / "b.txt")
    assert tokenize_probe(b, tok, n=50, max_len=64, min_len=10).id != base.id
    assert base.id.startswith("a.txt-") and base.row["content_hash"].startswith(base.id[-12:])


def test_a_registry_probe_reads_its_local_cache_instead_of_streaming(tmp_path, monkeypatch, docs):
    import geowh.ingest.sources.probes as probes

    monkeypatch.setenv("GEOWH_HOME", str(tmp_path))
    cache = tmp_path / "probes" / "wikitext-wikitext-103-raw-v1-train.jsonl"
    cache.parent.mkdir(parents=True)
    cache.write_text("".join(json.dumps(d) + "\n" for d in docs))

    def no_network(source, count):
        raise AssertionError("streamed although the cache has enough texts")

    monkeypatch.setattr(probes, "_stream", no_network)
    texts = load_texts("wikitext", n=100)
    assert texts.texts == tuple(docs[:200]) and texts.dataset == "Salesforce/wikitext"


def test_too_strict_a_min_len_is_a_clear_error(tmp_path, tok):
    (tmp_path / "p.txt").write_text("short line\nanother one\n")
    with pytest.raises(InputError, match="--min-len"):
        tokenize_probe(load_texts(tmp_path / "p.txt"), tok, n=10, min_len=32)


def test_the_tokenizer_fingerprint_follows_the_vocabulary_not_padding_or_a_cache():
    from geowh.ingest.sources.probes import tokenizer_fingerprint

    tok = tokenizer()  # a fresh copy: this test changes it
    before = tokenizer_fingerprint(tok)
    tok.backend_tokenizer.enable_padding(pad_id=0)
    assert tokenizer_fingerprint(tok) == before  # padding does not decide token ids
    tok.add_tokens(["<geowh-new-token>"])
    after = tokenizer_fingerprint(tok)  # asked again of the changed tokenizer: no stale answer
    assert after != before
    assert tokenizer_fingerprint(tokenizer()) == before  # the same tokenizer, loaded again
