"""Reads `schema.sql`: its numbered migrations, the comment on each column and each table's key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_MIGRATION = re.compile(r"^-- migration (\d+): (.+)$", re.MULTILINE)
_TABLE = re.compile(r"^CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)
_COLUMN = re.compile(r"^\s+(\w+)\s+[A-Z].*?--\s*(.+)$")
_ADDED = re.compile(r"^ALTER TABLE (\w+) ADD COLUMN (?:IF NOT EXISTS )?(\w+) .*?--\s*(.+)$", re.IGNORECASE)
_KEY = re.compile(r"^--\s*key\s+(\w+)\s*\(([^)]*)\)\s*(merged)?\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    version: int
    title: str
    sql: str
    comments: tuple[tuple[str, str, str], ...]
    """(table, column, comment) for every commented column the block creates or adds."""
    keys: tuple[tuple[str, tuple[str, ...], bool], ...] = ()
    """(table, key columns, merged) for every `-- key TABLE (COLUMNS) [merged]` line of the block."""


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
        blocks.append(Migration(int(head.group(1)), head.group(2).strip(), sql, _comments(sql), _keys(sql)))
    versions = [m.version for m in blocks]
    if versions != list(range(1, len(blocks) + 1)):
        raise RuntimeError(f"schema.sql migrations must be numbered 1, 2, 3 …; found {versions}")
    return tuple(blocks)


def latest_version() -> int:
    return migrations()[-1].version


@dataclass(frozen=True)
class TableKey:
    """How a row of a table is identified when it is written again."""

    columns: tuple[str, ...]
    merged: bool
    """A dimension table: a column the new row leaves NULL keeps its old value (else the row is replaced)."""


@cache
def table_keys() -> dict[str, TableKey]:
    """Every table's key, as schema.sql declares it (`-- key TABLE (COLUMNS) [merged]`); a later
    migration's declaration replaces an earlier one."""
    keys = {}
    for migration in migrations():
        for table, columns, merged in migration.keys:
            keys[table] = TableKey(columns, merged)
    return keys


def _keys(sql: str) -> tuple[tuple[str, tuple[str, ...], bool], ...]:
    return tuple(
        (m.group(1), tuple(c.strip() for c in m.group(2).split(",") if c.strip()), bool(m.group(3)))
        for m in _KEY.finditer(sql)
    )


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
