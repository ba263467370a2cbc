"""Documents from local files, in the one layout geowh reads everywhere (probes, corpora, indexes):
`.txt` (a document per line), `.jsonl` (a `text` field per line) or `.parquet` (a `text` column)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from geowh.errors import InputError

SUFFIXES = (".txt", ".jsonl", ".parquet")


def iter_documents(path: Path) -> Iterator[tuple[str, int]]:
    """(text, bytes consumed) per document, streamed; empty lines come as "" so progress adds up."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: text files must be .txt (a document per line), .jsonl or .parquet (`text`)")
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0]}): "
                             "write it again, or give a .txt or .jsonl file") from None
        if "text" not in file.schema_arrow.names:
            raise InputError(f"{path} has no `text` column (columns: {', '.join(file.schema_arrow.names)})")
        if not _stringlike(kind := file.schema_arrow.field("text").type):
            raise InputError(f"the `text` column of {path} holds {kind}, not strings: store the documents as strings")
        per_row = path.stat().st_size / max(file.metadata.num_rows, 1)
        try:
            for batch in file.iter_batches(columns=["text"], batch_size=4096):
                for text in batch.column(0).to_pylist():
                    yield text or "", int(per_row)
        except (pa.ArrowException, OSError) as e:  # a file damaged after its footer
            raise InputError(f"{path} is damaged ({str(e).splitlines()[0]}): write it again") from None
        return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if suffix == ".txt":
                yield raw.decode("utf-8", errors="replace").rstrip("\r\n"), len(raw)
                continue
            if not raw.strip():
                yield "", len(raw)
                continue
            try:
                text = json.loads(raw)["text"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path}:{number} is not a JSON object with a `text` field") from None
            if text is not None and not isinstance(text, str):
                raise InputError(f"{path}:{number}: `text` is a {type(text).__name__}, not a string: "
                                 "store each document as a JSON string")
            yield text or "", len(raw)


def _stringlike(kind) -> bool:
    """Strings as Arrow stores them: plain, large, views, dictionary-encoded, or an all-null column."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    checks = (pa.types.is_string, pa.types.is_large_string, pa.types.is_null,
              getattr(pa.types, "is_string_view", lambda _: False))
    return any(check(kind) for check in checks)


def read_documents(path: Path) -> list[str]:
    """The non-empty documents of a file, stripped of surrounding white space."""
    docs = [text.strip() for text, _ in iter_documents(path) if text and text.strip()]
    if not docs:
        raise InputError(f"{path} holds no text")
    return docs
