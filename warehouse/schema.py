"""Reads `schema.sql`: its numbered migrations and the comment on each column."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_MIGRATION = re.compile(r"^-- migration (\d+): (.+)$", re.MULTILINE)
_TABLE = re.compile(r"^CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)
_COLUMN = re.compile(r"^\s+(\w+)\s+[A-Z].*?--\s*(.+)$")
_ADDED = re.compile(r"^ALTER TABLE (\w+) ADD COLUMN (?:IF NOT EXISTS )?(\w+) .*?--\s*(.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Migration:
    version: int
    title: str
    sql: str
    comments: tuple[tuple[str, str, str], ...]
    """(table, column, comment) for every commented column the block creates or adds."""


def schema_text() -> str:
    return resources.files("geowh").joinpath("schema.sql").read_text()


@cache
def migrations() -> tuple[Migration, ...]:
    text = schema_text()
    heads = list(_MIGRATION.finditer(text))
    blocks = []
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        sql = text[head.end() : end]
        blocks.append(Migration(int(head.group(1)), head.group(2).strip(), sql, _comments(sql)))
    versions = [m.version for m in blocks]
    if versions != list(range(1, len(blocks) + 1)):
        raise RuntimeError(f"schema.sql migrations must be numbered 1, 2, 3 …; found {versions}")
    return tuple(blocks)


def latest_version() -> int:
    return migrations()[-1].version


def _comments(sql: str) -> tuple[tuple[str, str, str], ...]:
    found, table = [], None
    for line in sql.splitlines():
        if added := _ADDED.match(line):
            found.append((added.group(1), added.group(2), added.group(3).strip()))
        elif start := _TABLE.match(line):
            table = start.group(1)
        elif line.startswith(")"):
            table = None
        elif table and (column := _COLUMN.match(line)):
            found.append((table, column.group(1), column.group(2).strip()))
    return tuple(found)
