"""The warehouse: one DuckDB file, opened per operation so readers and a long ingest can share it."""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from geowh.errors import GeowhError, InputError, OutputError, WarehouseError
from geowh.outputs import check_output, output_path
from geowh.progress import Event, Progress, silent
from geowh.settings import settings
from geowh.signals import deferred
from geowh.warehouse.runs import running_rows
from geowh.warehouse.schema import latest_version, migrations, table_keys

# How a row is identified when it is written again: declared in schema.sql with the table
# (`-- key TABLE (COLUMNS) [merged]`). Dimension tables are merged (a column the new row leaves
# NULL keeps its old value); result tables are replaced row for row.
TABLE_KEYS: dict[str, tuple[str, ...]] = {table: key.columns for table, key in table_keys().items()}
MERGED_TABLES = {table for table, key in table_keys().items() if key.merged}

# Columns of `trajectories` that are not metrics; a metric with one of these names is skipped.
TRAJECTORY_KEYS = ("model", "checkpoint", "stage", "stage_order", "step", "tokens", "probe", "layer", "pooling")
LEADING_METRICS = ("rankme", "alpha_req")

# Statement types `geowh sql` runs; everything else could change a file and is refused. MULTI is
# PIVOT (DuckDB plans it as several statements); EXPLAIN is judged by the statement it explains.
READ_ONLY_STATEMENTS = {"SELECT", "PRAGMA", "CALL", "RELATION", "MULTI"}
_COMMENTS = r"^\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*"
_EXPLAIN = re.compile(_COMMENTS + r"explain\s+(?:analy[sz]e\b|\([^)]*\))?", re.IGNORECASE | re.DOTALL)
# The one PRAGMA that runs SQL read from files (a folder's schema.sql, which may COPY into it).
_IMPORT_DATABASE = re.compile(_COMMENTS + r'pragma\s+"?import_database\b', re.IGNORECASE | re.DOTALL)

LOCK_WAIT_SECONDS = 60.0
"""How long a reader waits for the file by default; an ingest waits as long as it takes."""
_LOCK_HOLDER = re.compile(r"lock is held in (.+?) \(PID (\d+)\)")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def as_warehouse(wh: str | Path | Warehouse | None) -> Warehouse:
    """The Warehouse a library function was given: itself, or the one at a path (None: the configured one)."""
    return wh if isinstance(wh, Warehouse) else Warehouse(wh)


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
        progress: Progress = silent,
    ):
        self.path = Path(path) if path is not None else settings().db
        self.lock_timeout = lock_timeout
        """Seconds to wait while another process holds the file; None waits as long as it takes."""
        self.progress = progress
        """Told when a wait for the file begins: a `locked` event, its text who holds the file
        (`PID 123 (python3)`), its data {"db": the path} (geowh/progress.py)."""
        self._migrated = False

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r})"

    # -- connections ------------------------------------------------------------------------

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection to the file: read-only and checked, or writable and migrated.

        The file is held only for the duration of the block: a days-long ingest then leaves
        gaps in which `geowh sql` or a notebook can read. While another process holds the file,
        this waits (`lock_timeout`, a minute by default) rather than failing at once. A full
        disk under a writing block becomes a WarehouseError.

        A read-only connection never changes the file: a missing file, a DuckDB file that is
        not a geowh warehouse and one of an older schema are refused (`migrate()` upgrades
        it). A writable one migrates the file to the current schema first.
        """
        if read_only:
            con = self._open_checked()
        else:
            if not self._migrated:
                self._migrate()
            con = self._open(read_only=False)
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

    def _open_checked(self) -> duckdb.DuckDBPyConnection:
        if not self.path.exists():
            raise WarehouseError(
                f"no warehouse at {self.path}: ingest or import something first, "
                "or point --db / GEOWH_DB at an existing .duckdb file"
            )
        con = self._open(read_only=True)
        try:
            if not self._migrated:
                self._check_readable(con)
        except BaseException:
            con.close()
            raise
        return con

    def _check_readable(self, con: duckdb.DuckDBPyConnection) -> None:
        """Refuse, without writing, a file a reader cannot use as it is."""
        try:
            current = _schema_version(con)
            tables = _user_tables(con) if current == 0 else []
        except duckdb.Error as e:
            raise self._damaged(e) from None
        if current == 0:
            if tables:
                raise _foreign(self.path, tables)
            raise WarehouseError(
                f"{self.path} is an empty DuckDB file, not a geowh warehouse yet: ingest or import something into it first"
            )
        if current > latest_version():
            raise _newer(self.path, current)
        if current < latest_version():
            raise WarehouseError(
                f"{self.path} has schema version {current}, older than this geowh's ({latest_version()}); "
                f"reading commands never change the file: upgrade it with `geowh migrate --db {self.path}` "
                "(any writing command, such as ingest, also upgrades it), then run this again"
            )
        self._migrated = True

    def _check_whole(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read every column of every table once: a file cut short (a copy, a full disk) still opens
        and tells its schema version from its first blocks, so without this `migrate` would call it
        up to date. Costs one pass over the file; only `migrate` asks for it."""
        for schema, table in con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall():
            try:
                con.execute(f'SELECT max(hash(COLUMNS(*))) FROM "{schema}"."{table}"').fetchall()
            except duckdb.IOException as e:
                if "read enough bytes" not in str(e):
                    raise
                raise WarehouseError(
                    f"{self.path} is truncated (table {table} cannot be read: {str(e).splitlines()[0]}). "
                    "Restore it from a backup, or rebuild it with the commands that wrote it"
                ) from None

    def _damaged(self, e: duckdb.Error) -> WarehouseError:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        return WarehouseError(
            f"{self.path} cannot be read ({message}): the file is damaged or truncated. "
            "Restore it from a backup, or rebuild it with the commands that wrote it"
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
                if (denied := _denied(e)) is not None:
                    raise WarehouseError(
                        f"{self.path} cannot be {'read' if read_only else 'written'}: {denied}. "
                        + ("Make the file readable, or point --db elsewhere" if read_only else
                           "This command writes to the warehouse: make the file and its folder writable, or point "
                           "--db at a copy in a writable place (reading commands such as sql and info work as it is)")
                    ) from None
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
                if now_held_by != holder:
                    self.progress(Event("locked", now_held_by, data={"db": str(self.path)}))
                holder = now_held_by
                time.sleep(0.5)
            except duckdb.Error as e:
                raise WarehouseError(
                    f"{self.path} is not a readable DuckDB warehouse ({e}); "
                    "check the path given by --db / GEOWH_DB"
                ) from None

    def _migrate(self) -> None:
        """Bring the file to the current schema; refuse one written by a newer geowh, or another
        program's DuckDB file (geowh never adds its tables to it)."""
        if self.path.exists():
            con = self._open(read_only=True)
            try:
                current = _schema_version(con)
                foreign = _user_tables(con) if current == 0 else []
            except duckdb.Error as e:
                raise self._damaged(e) from None
            finally:
                con.close()
            if foreign:
                raise _foreign(self.path, foreign)
            if current == latest_version():
                self._migrated = True
                return
            if current > latest_version():
                raise _newer(self.path, current)
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
                    try:
                        con.rollback()
                    except duckdb.Error:  # a failed commit (a full disk) has already ended the transaction
                        pass
                    if _disk_full(e):
                        raise self._full(e) from None
                    raise WarehouseError(
                        f"migration {migration.version} ({migration.title}) of {self.path} failed: {e}; "
                        "the file is unchanged by it"
                    ) from None
            if applied and applied < latest_version():  # a migration that redefines the view drops its later metric columns
                _refresh_trajectories(con)
        finally:
            try:
                con.close()
            except duckdb.Error as e:  # closing checkpoints the WAL, which a full disk refuses
                if not _disk_full(e):
                    raise
        self._migrated = True

    def migrate(self) -> tuple[int, int]:
        """Upgrade the file to this geowh's schema; returns (version before, version after).

        Readers never migrate; writers do it themselves. This is the explicit upgrade of a file
        written by an older geowh (`geowh migrate`).
        """
        if not self.path.exists():
            raise WarehouseError(f"no warehouse at {self.path}: nothing to migrate; check --db / GEOWH_DB")
        con = self._open(read_only=True)
        try:
            before = _schema_version(con)
            self._check_whole(con)
        except duckdb.Error as e:
            raise self._damaged(e) from None
        finally:
            con.close()
        self._migrate()
        return before, latest_version()

    def schema_version(self) -> int:
        with self.connect(read_only=True) as con:
            return _schema_version(con)

    # -- writing ----------------------------------------------------------------------------

    def write(
        self,
        rows: Mapping[str, pl.DataFrame | Sequence[Mapping[str, Any]]],
        *,
        before: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> None:
        """Write rows to several tables in one transaction: all of them or none.

        `rows` maps a table name to its new rows. Rows whose key (TABLE_KEYS) already exists
        replace the old ones; dimension tables (models, checkpoints, probes) merge instead.
        `before` holds (statement, parameters) run first in the same transaction, such as
        deletes of the rows the new ones replace. A DuckDB error (a constraint the rows
        break) leaves the file as it was and arrives as WarehouseError.
        """
        try:
            with self.connect() as con, deferred():
                frames = {t: _frame(con, t, r) for t, r in rows.items() if len(r)}
                con.begin()
                try:
                    for statement, params in before:
                        con.execute(statement, params)
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
        except duckdb.Error as e:
            raise WarehouseError(f"nothing was written to {self.path}: {str(e).splitlines()[0]}") from e

    def close_stale_runs(self, model: str) -> int:
        """Mark `running` rows of `model` whose process is gone (kill -9, a lost machine) as interrupted.

        A writer's first act, so an older file is migrated here as a write would.
        """
        if not self.path.exists():
            return 0
        if not self._migrated:
            self._migrate()
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

    def sql(self, statement: str, read: Sequence[str | Path] = (), missing_ok: bool = False,
            timeout: float | None = None) -> pl.DataFrame:
        """A user's SQL, run in DuckDB's own sandbox so that it can only read.

        The warehouse is opened read-only; external access is off except for the files and
        folders in `read` (the user's own Parquet/CSV to join); extensions are neither installed
        nor loaded; then the configuration is locked, so no statement can undo any of it.
        Statements that write are refused before they run, with a clear message. A missing
        file is an error, unless `missing_ok`: then the statement runs on an empty warehouse
        in memory, sandboxed alike.

        The query can always be stopped: Ctrl-C or SIGTERM (a KeyboardInterrupt) interrupts it
        inside DuckDB, and after `timeout` seconds (None or 0: no limit) it is interrupted and
        refused with a WarehouseError. Either way the file is released at once, so an ingest
        waiting for it goes on.
        """
        refuse_writes(statement)
        readable = _readable(read)
        if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
            raise InputError(f"--timeout {timeout}: give a number of seconds ≥ 0 (0: no limit)")
        if self.path.exists() or not missing_ok:
            with self.connect(read_only=True) as con:
                _sandbox(con, readable)
                return _run_interruptible(con, statement, timeout or None)
        con = duckdb.connect(":memory:")
        try:
            for migration in migrations():
                con.execute(migration.sql)
            _sandbox(con, readable)
            return _run_interruptible(con, statement, timeout or None)
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
        """Checkpoints of `model` that already have an ok run of this kind and config.

        Asked by writers before they write, so an older file is migrated here as a write would.
        """
        if not self.path.exists():
            return set()
        if not self._migrated:
            self._migrate()
        with self.connect(read_only=True) as con:  # a damaged file is reported by connect, not as a failed query
            rows = con.execute(
                "SELECT DISTINCT checkpoint FROM runs WHERE kind = ? AND model = ? AND config_key = ? AND status = 'ok'",
                [kind, model, config_key],
            ).fetchall()
        return {r[0] for r in rows}

    def measured_before(self, kind: str, model: str, settings_key: str, config_key: str) -> set[str]:
        """Checkpoints of `model` with an ok run of this kind and settings but another config key:
        measured by older metric definitions (`Plan.settings_key`; runs written before definitions
        were recorded have the settings key as their config key)."""
        if not self.path.exists():
            return set()
        if not self._migrated:
            self._migrate()
        with self.connect(read_only=True) as con:
            rows = con.execute(
                "SELECT DISTINCT checkpoint FROM runs WHERE kind = ? AND model = ? AND status = 'ok' AND config_key <> ? "
                "AND (config_key = ? OR json_extract_string(config, '$.settings_key') = ?)",
                [kind, model, config_key, settings_key, settings_key],
            ).fetchall()
        return {r[0] for r in rows}

    def stored_series(self, model: str) -> tuple[str | None, dict[str, tuple[str | None, str | None]]]:
        """(models.source, {checkpoint: (checkpoints.source, fingerprint of a measured one)}) of `model` as stored;
        (None, {}) when the warehouse holds none of it. Asked by writers before they write, so an
        older file is migrated here as a write would."""
        if not self.path.exists():
            return None, {}
        if not self._migrated:
            self._migrate()
        with self.connect(read_only=True) as con:
            source = con.execute("SELECT source FROM models WHERE model = ?", [model]).fetchall()
            # a fingerprint counts once something was measured from those weights: a checkpoint that
            # only failed (corrupt, half-copied) may be repaired and ingested again
            checkpoints = con.execute(
                "SELECT checkpoint, source, CASE WHEN EXISTS (SELECT 1 FROM runs r WHERE r.model = c.model "
                "AND r.checkpoint = c.checkpoint AND r.status = 'ok') THEN fingerprint END "
                "FROM checkpoints c WHERE model = ?", [model]
            ).fetchall()
        return (source[0][0] if source else None), {c: (where, fp) for c, where, fp in checkpoints}

    def info(self) -> dict[str, Any]:
        """What the warehouse holds: schema version, row counts, models and probes."""
        with self.connect(read_only=True) as con:
            try:
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
                stale = _stale_metrics(con)
            except duckdb.Error as e:
                raise self._damaged(e) from None
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
            # metric rows measured by another definition than the registry's now (docs/metrics.md)
            "stale_metric_rows": sum(s["rows"] for s in stale),
            "stale_metrics": stale,
        }

    def export(self, directory: str | Path, force: bool = False) -> list[Path]:
        """Write every table, and the trajectories view, as Parquet files into `directory`.

        Each file is written under a temporary name and renamed only once every table is
        written, so a failure (a full disk, Ctrl-C) leaves no partial file. Files already in
        `directory` are kept unless `force`.
        """
        if not str(directory).strip():  # Path("") is the current folder: never a folder the user named
            raise OutputError("export needs a folder name (got an empty one): e.g. geowh export ./parquet")
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} exists and is not a folder: give a folder to export into")
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the folder {out}: {e.strerror or e}") from None
        try:
            with self.connect(read_only=True) as con, ExitStack() as outputs:
                try:
                    names = [r[0] for r in con.execute(
                        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal "
                        "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
                        "AND NOT internal ORDER BY 1"
                    ).fetchall()]
                except duckdb.Error as e:
                    raise self._damaged(e) from None
                targets = [out / f"{name}.parquet" for name in names]
                for target in targets:
                    check_output(target, force=force, protect=[self.path])
                for name, target in zip(names, targets):
                    tmp = outputs.enter_context(output_path(target, force=force, protect=[self.path]))
                    try:
                        con.execute(
                            f"COPY (SELECT * FROM {_identifier(name)}) TO {_literal(str(tmp))} (FORMAT parquet)"
                        )
                    except duckdb.IOException as e:
                        raise OutputError(f"cannot write {target}: {str(e).splitlines()[0]}") from None
                    except duckdb.Error as e:
                        raise self._damaged(e) from None
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            raise
        return targets


# -- helpers ------------------------------------------------------------------------------------


def _stale_metrics(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per model and metric, the rows measured by another definition of the metric than the
    registry's now (its fingerprint in the run's config differs), or by a run that recorded
    none (written before geowh kept them). Imported values are not geowh's definitions: left out.
    """
    from geowh.spectrum_math import definitions, registered  # numpy only, and only here

    if "definitions" not in _columns(con, "runs"):  # an older schema: read-only commands refuse it anyway
        return []
    groups = con.execute(
        """
        SELECT m.model, m.metric, r.kind, json_extract(r.config, '$.definitions')::VARCHAR AS defs,
               count(*) AS n, count(DISTINCT m.checkpoint) AS checkpoints
        FROM metrics m JOIN runs r USING (run_id)
        WHERE m.index_dir IS NULL AND r.kind <> 'import'
        GROUP BY ALL ORDER BY m.model, m.metric
        """
    ).fetchall()
    current = definitions()
    stale: dict[tuple[str, str], dict[str, Any]] = {}
    for model, name, _kind, defs, n, checkpoints in groups:
        base = registered(name)
        stored = json.loads(defs) if defs and defs != "null" else None
        if base is None:
            # a metric the registry no longer makes, written by a run that measured with the registry
            if stored is None or name == "probe_loss":
                continue
            why = "no longer registered"
        elif stored is None:
            why = "measured before geowh recorded metric definitions"
        elif stored.get(base) != current[base]:
            why = "its definition changed since" if base in stored else "measured before the metric was registered"
        else:
            continue
        entry = stale.setdefault((model, name), {"model": model, "metric": name, "rows": 0, "checkpoints": 0, "why": why})
        entry["rows"] += n
        entry["checkpoints"] += checkpoints
    return list(stale.values())


def lock_holder(error: BaseException) -> str:
    """Who holds the file, as DuckDB's lock error names it: `PID 123 (python3.11)`."""
    if m := _LOCK_HOLDER.search(str(error)):
        return f"PID {m[2]} ({Path(m[1]).name})"
    return "another process"


def _denied(error: BaseException) -> str | None:
    """'Permission denied' or 'Read-only file system' when DuckDB's IOException says so, else None."""
    text = str(error)
    for reason in ("Permission denied", "Read-only file system"):
        if reason.lower() in text.lower():
            return reason
    return None


def _disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def refuse_writes(statement: str) -> None:
    """Raise unless every statement in `statement` only reads.

    The sandbox of `Warehouse.sql` is what keeps the files safe; this check gives a statement
    that would write a clear message before it runs, and keeps writes out of the folders
    opened with `read` (DuckDB's allowed directories are writable).
    """
    try:
        statements = duckdb.extract_statements(statement)
    except duckdb.Error as e:
        raise WarehouseError(f"cannot parse the SQL: {str(e).splitlines()[0]}") from None
    if not statements:
        raise WarehouseError(
            "the SQL holds no statement (only comments or blanks): pass one, e.g. geowh sql \"select 42\""
        )
    for parsed in statements:
        kind = parsed.type.name
        if kind == "EXPLAIN":
            inner = _EXPLAIN.sub("", parsed.query, count=1)
            if inner != parsed.query and inner.strip():
                refuse_writes(inner)
                continue
        if kind == "PRAGMA" and _IMPORT_DATABASE.match(parsed.query):
            raise WarehouseError(
                "geowh sql only reads; PRAGMA import_database runs the SQL files of a folder and is refused"
            )
        if kind not in READ_ONLY_STATEMENTS:
            raise WarehouseError(
                f"geowh sql only reads; a {kind} statement is refused. "
                "Write through geowh's commands, or open the file with duckdb yourself"
            )


def _readable(paths: Sequence[str | Path]) -> list[Path]:
    """The files and folders `geowh sql --read` opens, resolved; each must exist."""
    found = []
    for path in paths:
        resolved = Path(path).expanduser().resolve()
        if not resolved.exists():
            raise InputError(f"--read {path}: no such file or folder")
        found.append(resolved)
    return found


def _sandbox(con: duckdb.DuckDBPyConnection, readable: Sequence[Path]) -> None:
    """DuckDB's own sandbox: no file but `readable`, no extension install or load, then locked."""
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    files = [str(p) for p in readable if not p.is_dir()]
    folders = [str(p).rstrip("/") + "/" for p in readable if p.is_dir()]
    if files:
        con.execute("SET allowed_paths = ?", [files])
    if folders:
        con.execute("SET allowed_directories = ?", [folders])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _user_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND NOT internal "
        "ORDER BY 1"
    ).fetchall()]


def _foreign(path: Path, tables: list[str]) -> WarehouseError:
    shown = ", ".join(tables[:5]) + (" …" if len(tables) > 5 else "")
    return WarehouseError(
        f"{path} is a DuckDB file but not a geowh warehouse (it holds {shown} and no schema_migrations): "
        "geowh neither reads it nor adds its tables to it; point --db / GEOWH_DB at a geowh warehouse or a new file"
    )


def _newer(path: Path, version: int) -> WarehouseError:
    return WarehouseError(
        f"{path} has schema version {version}, newer than this geowh knows "
        f"({latest_version()}): upgrade geowh (pip install -U geowh) to open it"
    )


def _run_read_only(con: duckdb.DuckDBPyConnection, statement: str, params) -> pl.DataFrame:
    try:
        return _fetch(con, statement, params)
    except duckdb.Error as e:
        message = str(e).splitlines()[0]
        raise WarehouseError(f"query failed: {message}") from None


def _run_interruptible(con: duckdb.DuckDBPyConnection, statement: str, timeout: float | None) -> pl.DataFrame:
    """`statement`'s rows, run in a worker thread so that a signal or the timeout can stop it.

    While DuckDB executes, the calling thread is inside C code and a Python signal handler
    would only run once the query ends (never, for an endless one). So the query runs in a
    worker and this thread waits in short slices, where Ctrl-C and SIGTERM arrive; either, or
    the deadline, calls DuckDB's `interrupt()`, which ends the query within milliseconds.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["frame"] = _run_read_only(con, statement, None)
        except BaseException as e:  # handed to the waiting thread, which raises it
            outcome["error"] = e
        finally:
            done.set()

    # An Event, not Thread.join: a join cut by a signal can later return before the thread ends
    # (Python < 3.13), and closing the connection under a running query fails.
    worker = threading.Thread(target=work, name="geowh-sql", daemon=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    worker.start()
    try:
        while not done.wait(0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                con.interrupt()
                done.wait()
                raise WarehouseError(
                    f"the query ran longer than its limit of {timeout:g} s and was stopped: "
                    "pass --timeout SECONDS for a longer one (0: no limit), or write the rows with --out FILE (no limit)"
                )
    except BaseException as e:
        if not done.is_set():
            con.interrupt()
            with deferred():  # a second Ctrl-C must not leave the query running under a closing connection
                done.wait()
        if not isinstance(e, GeowhError):
            # the CLI's line on Ctrl-C: a query writes nothing, so there is nothing to resume
            e.detail = "the query was interrupted; nothing was written"  # type: ignore[attr-defined]
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["frame"]


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
    if table not in TABLE_KEYS:
        raise WarehouseError(f"table {table} declares no key in schema.sql (`-- key {table} (COLUMNS)`): geowh cannot write it")
    keys = TABLE_KEYS[table]
    con.register("_new_rows", frame)
    try:
        # a key column the rows leave out is NULL in them (metrics.index_dir of a geometry row)
        match = " AND ".join(
            f"t.{k} IS NOT DISTINCT FROM n.{k}" if k in frame.columns else f"t.{k} IS NULL" for k in keys
        )
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
    names = [r[0] for r in con.execute(
        "SELECT DISTINCT metric FROM metrics WHERE index_dir IS NULL ORDER BY metric"
    ).fetchall()]
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
               {pivots},
               any_value(f.flag) AS alpha_req_fit  -- the flag of the αReQ fit (schema.sql migration 7)
        FROM metrics m JOIN checkpoints c USING (model, checkpoint)
        LEFT JOIN alpha_req_fits f
               ON f.model = m.model AND f.checkpoint = m.checkpoint AND f.probe IS NOT DISTINCT FROM m.probe
              AND f.layer IS NOT DISTINCT FROM m.layer AND f.pooling IS NOT DISTINCT FROM m.pooling
              AND f.metric = 'alpha_req'
        WHERE m.index_dir IS NULL  -- memorization scores: the `memorization` view
        GROUP BY ALL
        """
    )


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
