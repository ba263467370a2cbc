"""Training text for `geowh train-mini`: an English corpus every geowh install already has.

The default corpus is the prose of the Python code geowh runs on: the docstrings and comment
blocks of the interpreter's standard library (plus the language reference text that ships in
`pydoc_data`), then of the packages geowh itself depends on (numpy, torch, transformers, …).
Why this one:

- it is on every machine that can run geowh, with no download and no install step (Debian
  documentation packages need apt, hub datasets need the network, a corpus package on PyPI
  would be one more dependency of uncertain licence and quality);
- it is real English written by people (API documentation, explanations, design notes),
  about 27 MB (6.5M tokens of an 8k BPE) once cleaned, on Python 3.11 with geowh's
  dependencies — five times the 5 MB floor, and more than a CPU run of minutes reads once;
- it is deterministic: the same interpreter and package versions give byte-identical text.
  The versions are part of the cache key and recorded with every run (`Corpus.sources`).

Documents are one per line (whitespace collapsed), deduplicated, in a fixed order: sources in
`PACKAGES` order, files sorted by path, documents in file order. The text is built once and
cached under `settings().home / "corpus"`. `--corpus PATH…` takes the user's own .txt
(one document per line), .jsonl (`text` field) or .parquet (`text` column) files instead.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geowh.errors import InputError
from geowh.progress import Event, Progress, silent
from geowh.settings import settings

# Bump when the extraction changes, so cached corpora of older code are not reused.
CORPUS_VERSION = 3
# The standard library first, then geowh's own dependencies, heaviest prose last. Order matters:
# with a size limit the corpus is the prefix of this list.
PACKAGES = (
    "numpy", "scipy", "click", "typer", "rich", "duckdb", "polars", "pyarrow", "matplotlib",
    "huggingface-hub", "datasets", "tokenizers", "safetensors", "torch", "transformers",
)
DEFAULT_MAX_MB = 64.0
# The least prose the default corpus may hold: less would be read many times over by a run.
MIN_BYTES = 5_000_000
MIN_CHARS = 64
# A docstring or comment block is prose when letters and spaces make most of it (code examples
# and tables of numbers do not).
MIN_PROSE_SHARE = 0.75
_SKIP_DIRS = {"test", "tests", "testing", "idle_test", "site-packages", "dist-packages", "__pycache__"}
# Boilerplate that differs between files only in a name or a year: license headers and the
# banners of generated files. Dedup cannot catch it, and it would be memorised verbatim.
_BOILERPLATE = re.compile(r"automatically generated|licensed under|all rights reserved|spdx-license", re.IGNORECASE)
_PRAGMA = re.compile(r"^(!|-\*-|\s*(noqa|type:|pragma|pylint:|fmt:|isort:|mypy:|ruff:|flake8|nolint))", re.IGNORECASE)


@dataclass(frozen=True)
class Corpus:
    """Documents of training text and where they came from."""

    name: str
    texts: tuple[str, ...] = field(repr=False)
    sources: tuple[dict, ...] = ()
    """One entry per source: {"source", "version", "files", "documents", "bytes"}."""
    sha256: str = ""
    path: Path | None = None
    """The cached text file (one document per line) of the default corpus."""

    @property
    def bytes(self) -> int:
        return sum(len(t.encode()) for t in self.texts) + len(self.texts)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "documents": len(self.texts),
            "bytes": self.bytes,
            "sha256": self.sha256,
            "path": str(self.path) if self.path else None,
            "sources": list(self.sources),
        }


def load_corpus(
    paths: Sequence[str | Path] | None = None,
    *,
    max_mb: float = DEFAULT_MAX_MB,
    refresh: bool = False,
    progress: Progress = silent,
) -> Corpus:
    """The user's files when `paths` are given, else the default corpus (built once, then cached;
    `progress` hears a `status` per source read while it is built)."""
    if paths:
        return files_corpus(paths)
    return python_docs_corpus(max_mb=max_mb, refresh=refresh, progress=progress)


def files_corpus(paths: Sequence[str | Path]) -> Corpus:
    """Documents of local .txt (one per line), .jsonl (`text`) or .parquet (`text`) files, in order."""
    from geowh.texts import read_documents

    texts: list[str] = []
    sources = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise InputError(f"--corpus {p}: no such file (give .txt, .jsonl or .parquet files)")
        docs = [_one_line(d) for d in read_documents(path)]
        docs = [d for d in docs if d]
        texts += docs
        sources.append({"source": str(path.resolve()), "version": None, "files": 1, "documents": len(docs),
                        "bytes": sum(len(d.encode()) + 1 for d in docs)})
    name = Path(paths[0]).stem if len(paths) == 1 else f"{Path(paths[0]).stem}+{len(paths) - 1}"
    return Corpus(name, tuple(texts), tuple(sources), _sha(texts))


# -- the default corpus ----------------------------------------------------------------------------


def corpus_sources() -> list[tuple[str, str, list[Path]]]:
    """(source, version, sorted .py files) of the standard library and each installed `PACKAGES` entry."""
    from importlib import metadata

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = sys.version.split()[0]
    found = [("python-stdlib", version, _py_files(stdlib.rglob("*.py"), stdlib))]
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency missing: the corpus is simply smaller
        files = [Path(str(dist.locate_file(f))) for f in (dist.files or []) if str(f).endswith(".py")]
        root = Path(str(dist.locate_file("")))
        found.append((name, dist.version, _py_files(files, root)))
    return found


def python_docs_corpus(
    *, max_mb: float = DEFAULT_MAX_MB, refresh: bool = False, progress: Progress = silent
) -> Corpus:
    """Docstrings and comments of the standard library and geowh's dependencies, up to `max_mb` MB."""
    if max_mb <= 0:
        raise InputError("the corpus size limit must be positive")
    sources = corpus_sources()
    key_spec = {"v": CORPUS_VERSION, "max_mb": max_mb, "versions": [(s, v) for s, v, _ in sources]}
    key = hashlib.sha256(json.dumps(key_spec).encode()).hexdigest()[:12]
    cache = settings().home / "corpus" / f"python-docs-{key}.txt"
    meta_path = cache.with_suffix(".json")
    if cache.is_file() and meta_path.is_file() and not refresh:
        meta = json.loads(meta_path.read_text())
        cached = tuple(cache.read_text(encoding="utf-8").splitlines())
        return Corpus("python-docs", cached, tuple(meta["sources"]), meta["sha256"], cache)

    limit = int(max_mb * 1e6)
    texts: list[str] = []
    seen: set[str] = set()
    described = []
    size = 0
    for source, version, files in sources:
        if size >= limit:
            break
        progress(Event("status", f"corpus: {source} {version} ({len(files)} files)"))
        count, start = 0, size
        for doc in _documents(source, files):
            digest = hashlib.blake2b(doc.encode(), digest_size=16).digest().hex()
            if digest in seen:
                continue
            seen.add(digest)
            texts.append(doc)
            count += 1
            size += len(doc.encode()) + 1
            if size >= limit:
                break
        described.append({"source": source, "version": version, "files": len(files), "documents": count,
                          "bytes": size - start})
    if size < MIN_BYTES:
        raise InputError(
            f"the Python sources here hold only {size / 1e6:.1f} MB of prose (at least {MIN_BYTES / 1e6:.0f} MB are needed): "
            "pass your own text with --corpus FILE.txt"
        )
    sha = _sha(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    partial.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    meta_path.write_text(json.dumps({"sha256": sha, "sources": described, **key_spec}, indent=2))
    partial.replace(cache)  # the text file appears last: a crash leaves no half corpus
    return Corpus("python-docs", tuple(texts), tuple(described), sha, cache)


def _py_files(files, root: Path) -> list[Path]:
    picked = []
    for f in files:
        rel = f.relative_to(root) if f.is_relative_to(root) else f
        if _SKIP_DIRS.isdisjoint(rel.parts[:-1]) and f.is_file():
            picked.append(f)
    return sorted(picked, key=lambda p: p.as_posix())


def _documents(source: str, files: list[Path]) -> Iterator[str]:
    if source == "python-stdlib":
        yield from _reference_topics()
    for path in files:
        try:
            code = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable sources are not text we want
        yield from _docstrings(code)
        yield from _comment_blocks(code)


def _reference_topics() -> Iterator[str]:
    """The language reference as plain text, shipped in the standard library for `help()`."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        return
    for name in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[name]):
            if doc := _prose(para):
                yield doc


def _docstrings(code: str) -> Iterator[str]:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):  # Python 2 leftovers, templates
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node)
            if text and (doc := _prose(_without_doctests(text))):
                yield doc


def _without_doctests(text: str) -> str:
    """The docstring without its doctest blocks (from a `>>>` line to the next blank line): code."""
    kept, in_doctest = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(">>>"):
            in_doctest = True
        elif not line.strip():
            in_doctest = False
        if not in_doctest:
            kept.append(line)
    return "\n".join(kept)


def _comment_blocks(code: str) -> Iterator[str]:
    """Runs of whole-line comments, each joined into one document."""
    block: list[str] = []
    last_row = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type != tokenize.COMMENT or tok.line.strip() != tok.string.strip():
                continue
            text = tok.string.lstrip("#").strip()
            if tok.start[0] != last_row + 1 and block:
                if doc := _prose(" ".join(block)):
                    yield doc
                block = []
            last_row = tok.start[0]
            if text and not _PRAGMA.match(text):
                block.append(text)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # what was read so far still counts
    if block and (doc := _prose(" ".join(block))):
        yield doc


def _prose(text: str) -> str | None:
    text = _one_line(text)
    if len(text) < MIN_CHARS or _BOILERPLATE.search(text):
        return None
    letters = sum(c.isalpha() or c == " " for c in text)
    return text if letters >= MIN_PROSE_SHARE * len(text) else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _sha(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\n")
    return h.hexdigest()
