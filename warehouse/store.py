"""The warehouse: one DuckDB file, opened per operation so readers and a long ingest can share it."""

from __future__ import annotations

import errno
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from geowh.errors import WarehouseError
from geowh.settings import settings
from geowh.signals import deferred
from geowh.warehouse.runs import running_rows
from geowh.warehouse.schema import latest_version, migrations

# How a row is identified when it is written again. Dimension tables are merged (a column the
# new row leaves NULL keeps its old value); result tables are replaced row for row.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "models": ("model",),
    "checkpoints": ("model", "checkpoint"),
    "probes": ("probe",),
    "runs": ("run_id",),
    "spectra": ("model", "checkpoint", "probe", "layer", "pooling"),
    "metrics": ("model", "checkpoint", "probe", "layer", "pooling", "metric"),
    "evals": ("model", "checkpoint", "task", "metric", "filter", "num_fewshot"),
    "phases": ("model", "probe", "layer", "pooling", "basis", "phase_index"),
    "indexes": ("index_dir",),
    "infgram_items": ("index_dir", "task", "item"),
    "memorization_items": ("model", "checkpoint", "task", "item"),
}
MERGED_TABLES = {"models", "checkpoints", "probes"}

# Columns of `trajectories` that are not metrics; a metric with one of these names is skipped.
TRAJECTORY_KEYS = ("model", "checkpoint", "stage", "stage_order", "step", "tokens", "probe", "layer", "pooling")
LEADING_METRICS = ("rankme", "alpha_req")

# Statement types `geowh sql` runs; everything else could change the file and is refused.
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN", "PRAGMA", "CALL", "RELATION"}

LOCK_WAIT_SECONDS = 60.0
"""How long a reader waits for the file by default; an ingest waits as long as it takes."""
_LOCK_HOLDER = re.compile(r"lock is held in (.+?) \(PID (\d+)\)")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Warehouse:
    """A geowh warehouse file. Reads return polars DataFrames.

    >>> wh = Warehouse("w.duckdb")
    >>> wh.query("select step, rankme from trajectories where model = ?", ["pythia-410m"])
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        lock_timeout: float | None = LOCK_WAIT_SECONDS,
        on_wait: Callable[[str], None] | None = None,
    ):
        self.path = Path(path) if path is not None else settings().db
        self.lock_timeout = lock_timeout
        """Seconds to wait while another process holds the file; None waits as long as it takes."""
        self.on_wait = on_wait
        """Called with who holds the file (`PID 123 (python3)`) when a wait for it begins."""
        self._migrated = False

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r})"

    # -- connections ------------------------------------------------------------------------

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the file, migrated to the current schema.

        The file is held only for the duration of the block: a days-long ingest then leaves
        gaps in which `geowh sql` or a notebook can read. While another process holds the file,
        this waits (`lock_timeout`, a minute by default) rather than failing at once. A full
        disk under a writing block becomes a WarehouseError.
        """
        if read_only and not self.path.exists():
            raise WarehouseError(
                f"no warehouse at {self.path}: ingest or import something first, "
                "or point --db / GEOWH_DB at an existing .duckdb file"
            )
        if not self._migrated:
            self._migrate()
        con = self._open(read_only)
        try:
            yield con
        except (duckdb.Error, OSError) as e:
            if _disk_full(e):
                raise self._full(e) from None
            if "Could not read enough bytes" in str(e):
                raise WarehouseError(
                    f"{self.path} is truncated ({str(e).splitlines()[0]}): restore it from a copy, "
                    "or point --db at another file (a new one starts empty)"
                ) from None
            raise
        finally:
            try:
                con.close()
            except duckdb.Error as e:  # closing checkpoints the WAL, which a full disk refuses
                if not _disk_full(e):
                    raise

    def _full(self, error: BaseException) -> WarehouseError:
        return WarehouseError(
            f"the disk holding {self.path} is full ({str(error).splitlines()[0]}); nothing of this write "
            "was stored: free some space (or point --db elsewhere) and run the command again to resume"
        )

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                if _disk_full(e):
                    raise self._full(e) from None
                raise
        deadline = None if self.lock_timeout is None else time.monotonic() + self.lock_timeout
        holder = None
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except duckdb.IOException as e:
                if _disk_full(e):
                    raise self._full(e) from None
                if "lock" not in str(e).lower():
                    raise WarehouseError(
                        f"{self.path} is not a readable DuckDB warehouse ({e}); "
                        "check the path given by --db / GEOWH_DB"
                    ) from None
                if deadline is not None and time.monotonic() > deadline:
                    raise WarehouseError(
                        f"the warehouse {self.path} is held by another process ({e}); "
                        "wait for it to finish or stop it, then run this again"
                    ) from None
                now_held_by = lock_holder(e)
                if now_held_by != holder and self.on_wait is not None:
                    self.on_wait(now_held_by)
                holder = now_held_by
                time.sleep(0.5)
            except duckdb.Error as e:
                raise WarehouseError(
                    f"{self.path} is not a readable DuckDB warehouse ({e}); "
                    "check the path given by --db / GEOWH_DB"
                ) from None

    def _migrate(self) -> None:
        """Bring the file to the current schema; refuse one written by a newer geowh."""
        if self.path.exists():
            con = self._open(read_only=True)
            try:
                current = _schema_version(con)
            finally:
                con.close()
            if current == latest_version():
                self._migrated = True
                return
            if current > latest_version():
                raise WarehouseError(
                    f"{self.path} has schema version {current}, newer than this geowh knows "
                    f"({latest_version()}): upgrade geowh (pip install -U geowh) to open it"
                )
        con = self._open(read_only=False)
        try:
            applied = _schema_version(con)
            for migration in migrations():
                if migration.version <= applied:
                    continue
                con.begin()
                try:
                    con.execute(migration.sql)
                    for table, column, comment in migration.comments:
                        con.execute(f"COMMENT ON COLUMN {table}.{column} IS {_literal(comment)}")
                    con.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        [migration.version, migration.title, utcnow()],
                    )
                    con.commit()
                except duckdb.Error as e:
                    con.rollback()
                    raise WarehouseError(
                        f"migration {migration.version} ({migration.title}) of {self.path} failed: {e}; "
                        "the file is unchanged by it"
                    ) from None
        finally:
            con.close()
        self._migrated = True

    def schema_version(self) -> int:
        with self.connect(read_only=True) as con:
            return _schema_version(con)

    # -- writing ----------------------------------------------------------------------------

    def write(self, rows: Mapping[str, pl.DataFrame | Sequence[Mapping[str, Any]]]) -> None:
        """Write rows to several tables in one transaction: all of them or none.

        `rows` maps a table name to its new rows. Rows whose key (TABLE_KEYS) already exists
        replace the old ones; dimension tables (models, checkpoints, probes) merge instead.
        """
        with self.connect() as con, deferred():
            frames = {t: _frame(con, t, r) for t, r in rows.items() if len(r)}
            con.begin()
            try:
                for table, frame in frames.items():
                    _upsert(con, table, frame)
                if "metrics" in frames:
                    _refresh_trajectories(con)
                con.commit()
            except BaseException:
                try:
                    con.rollback()
                except duckdb.Error:  # a failed commit has already ended the transaction
                    pass
                raise

    def close_stale_runs(self, model: str) -> int:
        """Mark `running` rows of `model` whose process is gone (kill -9, a lost machine) as interrupted."""
        if not self.path.exists():
            return 0
        with self.connect(read_only=True) as con:
            stale = [run_id for run_id, is_stale in running_rows(con, model) if is_stale]
        if stale:
            self.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = coalesce(finished_at, ?), "
                "error = coalesce(error, 'stale: its process ended without finishing it (killed, crashed or its "
                "machine was lost); marked by a later ingest') "
                f"WHERE status = 'running' AND run_id IN ({', '.join('?' * len(stale))})",
                [utcnow(), *stale],
            )
        return len(stale)

    def execute(self, statement: str, params: Sequence[Any] | None = None) -> None:
        """Run one writing statement in its own transaction (for maintenance and migrations)."""
        with self.connect() as con:
            con.execute(statement, params)

    # -- reading ----------------------------------------------------------------------------

    def query(self, statement: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Run a read-only query and return its rows."""
        with self.connect(read_only=True) as con:
            return _run_read_only(con, statement, params)

    def sql(self, statement: str) -> pl.DataFrame:
        """A user's SQL: refused unless it only reads. Without a file, an empty warehouse is used."""
        refuse_writes(statement)
        if self.path.exists():
            return self.query(statement)
        con = duckdb.connect(":memory:")
        try:
            for migration in migrations():
                con.execute(migration.sql)
            return _run_read_only(con, statement, None)
        finally:
            con.close()

    def table(self, name: str) -> pl.DataFrame:
        return self.query(f"SELECT * FROM {_identifier(name)}")

    def trajectories(
        self,
        model: str | None = None,
        probe: str | None = None,
        layer: int | None = None,
        pooling: str | None = None,
    ) -> pl.DataFrame:
        """The wide view, filtered, ordered by stage then step."""
        where, params = [], []
        for column, value in (("model", model), ("probe", probe), ("layer", layer), ("pooling", pooling)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self.query(
            f"SELECT * FROM trajectories {clause} ORDER BY model, stage_order, step, checkpoint, probe, layer",
            params,
        )

    def completed(self, kind: str, model: str, config_key: str) -> set[str]:
        """Checkpoints of `model` that already have an ok run of this kind and config."""
        if not self.path.exists():
            return set()
        with self.connect(read_only=True) as con:  # a damaged file is reported by connect, not as a failed query
            rows = con.execute(
                "SELECT DISTINCT checkpoint FROM runs WHERE kind = ? AND model = ? AND config_key = ? AND status = 'ok'",
                [kind, model, config_key],
            ).fetchall()
        return {r[0] for r in rows}

    def info(self) -> dict[str, Any]:
        """What the warehouse holds: schema version, row counts, models and probes."""
        with self.connect(read_only=True) as con:
            tables = [r[0] for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                "AND NOT internal ORDER BY table_name"
            ).fetchall()]
            counts = {t: con.execute(f"SELECT count(*) FROM {_identifier(t)}").fetchall()[0][0] for t in tables}
            models = _fetch(
                con,
                """
                SELECT m.model, m.family, count(DISTINCT c.checkpoint) AS checkpoints,
                       min(c.step) AS first_step, max(c.step) AS last_step,
                       (SELECT count(*) FROM metrics x WHERE x.model = m.model) AS metric_rows
                FROM models m LEFT JOIN checkpoints c USING (model)
                GROUP BY ALL ORDER BY m.model
                """,
            )
            probes = _fetch(con, "SELECT probe, name, sequences, max_len, tokenizer FROM probes ORDER BY probe")
            failed = con.execute("SELECT count(*) FROM runs WHERE status = 'failed'").fetchall()[0][0]
            interrupted = con.execute("SELECT count(*) FROM runs WHERE status = 'interrupted'").fetchall()[0][0]
            running = running_rows(con)
            version = _schema_version(con)
        return {
            "path": str(self.path),
            "schema_version": version,
            "bytes": self.path.stat().st_size,
            "tables": counts,
            "failed_runs": failed,
            # a running row whose process is gone (kill -9, a lost machine) is an interrupted run
            "interrupted_runs": interrupted + sum(stale for _, stale in running),
            "running_runs": sum(not stale for _, stale in running),
            "models": models.to_dicts(),
            "probes": probes.to_dicts(),
        }

    def export(self, directory: str | Path) -> list[Path]:
        """Write every table, and the trajectories view, as Parquet files into `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        with self.connect(read_only=True) as con:
            names = [r[0] for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal "
                "UNION ALL SELECT 'trajectories' ORDER BY 1"
            ).fetchall()]
            for name in names:
                target = out / f"{name}.parquet"
                con.execute(f"COPY (SELECT * FROM {_identifier(name)}) TO {_literal(str(target))} (FORMAT parquet)")
                written.append(target)
        return written


# -- helpers ------------------------------------------------------------------------------------


def lock_holder(error: BaseException) -> str:
    """Who holds the file, as DuckDB's lock error names it: `PID 123 (python3.11)`."""
    if m := _LOCK_HOLDER.search(str(error)):
        return f"PID {m[2]} ({Path(m[1]).name})"
    return "another process"


def _disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def refuse_writes(statement: str) -> None:
    """Raise unless every statement in `statement` only reads."""
    try:
        statements = duckdb.extract_statements(statement)
    except duckdb.Error as e:
        raise WarehouseError(f"cannot parse the SQL: {e}") from None
    if not statements:
        raise WarehouseError("no SQL statement given: pass one, e.g. geowh sql \"select 42\"")
    for parsed in statements:
        kind = parsed.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise WarehouseError(
                f"geowh sql only reads; a {kind} statement is refused. "
                "Write through geowh's commands, or open the file with duckdb yourself"
            )


def _run_read_only(con: duckdb.DuckDBPyConnection, statement: str, params) -> pl.DataFrame:
    try:
        return _fetch(con, statement, params)
    except duckdb.Error as e:
        message = str(e).splitlines()[0]
        raise WarehouseError(f"query failed: {message}") from None


def _fetch(con: duckdb.DuckDBPyConnection, statement: str, params=None) -> pl.DataFrame:
    relation = con.sql(statement, params=params)
    return pl.DataFrame() if relation is None else relation.pl()


def _schema_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND table_name = 'schema_migrations'"
    ).fetchall()[0][0]
    if not exists:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()[0][0]


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
        "AND table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    if not rows:
        raise WarehouseError(f"the warehouse has no table {table!r}")
    return dict(rows)


def _frame(con, table: str, rows) -> pl.DataFrame:
    """New rows as a DataFrame with exactly the table's types (JSON values serialised)."""
    columns = _columns(con, table)
    frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(
        [{k: _json_value(v) if columns.get(k) == "JSON" else v for k, v in row.items()} for row in rows],
        infer_schema_length=None,
    )
    unknown = set(frame.columns) - set(columns)
    if unknown:
        raise WarehouseError(f"table {table} has no column(s) {sorted(unknown)}")
    return frame


def _json_value(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _upsert(con, table: str, frame: pl.DataFrame) -> None:
    keys = TABLE_KEYS[table]
    con.register("_new_rows", frame)
    try:
        match = " AND ".join(f"t.{k} IS NOT DISTINCT FROM n.{k}" for k in keys)
        if table in MERGED_TABLES:
            given = set(frame.columns)
            picks = ", ".join(
                f"coalesce(n.{c}, t.{c}) AS {c}" if c in given and c not in keys else f"n.{c}" if c in keys else f"t.{c}"
                for c in _columns(con, table)
            )
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _merged AS SELECT DISTINCT ON ({', '.join('n.' + k for k in keys)}) {picks} "
                f"FROM _new_rows n LEFT JOIN {table} t ON {match}"
            )
            source = "_merged"
        else:
            source = "_new_rows"
        con.execute(f"DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM {source} n WHERE {match})")
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {source}")
    finally:
        con.unregister("_new_rows")


def _refresh_trajectories(con) -> None:
    """Rebuild `trajectories` when `metrics` holds a metric the view has no column for."""
    names = [r[0] for r in con.execute("SELECT DISTINCT metric FROM metrics ORDER BY metric").fetchall()]
    view = set(_columns(con, "trajectories"))
    metrics = [m for m in LEADING_METRICS] + [m for m in names if m not in LEADING_METRICS and m not in TRAJECTORY_KEYS]
    if all(m in view for m in metrics):
        return
    pivots = ",\n       ".join(
        f"max(m.value) FILTER (WHERE m.metric = {_literal(m)}) AS {_identifier(m)}" for m in metrics
    )
    con.execute(
        f"""
        CREATE OR REPLACE VIEW trajectories AS
        SELECT c.model, m.checkpoint, c.stage, c.stage_order, c.step, c.tokens, m.probe, m.layer, m.pooling,
               {pivots}
        FROM metrics m JOIN checkpoints c USING (model, checkpoint)
        GROUP BY ALL
        """
    )


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
