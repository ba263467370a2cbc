"""Which `running` rows still run: a row left by kill -9 or a lost machine is stale.

A run row records the host and pid of the process that runs it (migration 4). On that host a
row is stale once its process is gone (or the pid now belongs to a process started after the
run); a row from another host is stale once it is older than `STALE_AFTER`, since no process
there can be asked. Rows written before migration 4 name no process and are stale.
Marking a live run stale by mistake costs nothing: its final write replaces the row by run_id.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

STALE_AFTER = timedelta(hours=6)
"""A running row of another host older than this is taken as lost."""


PACKAGES = {
    "torch_version": "torch",
    "transformers_version": "transformers",
    "numpy_version": "numpy",
    "scipy_version": "scipy",
    "infini_gram_version": "infini-gram",
}
"""The `runs` columns of package versions, and the distribution each one reads."""


def package_versions(columns: tuple[str, ...] = tuple(PACKAGES)) -> dict[str, str | None]:
    """The installed version of each package column's distribution (None when not installed).

    Read from the installed metadata, not by importing: building a run row stays torch-free.
    """
    found: dict[str, str | None] = {}
    for column in columns:
        try:
            found[column] = metadata.version(PACKAGES[column])
        except metadata.PackageNotFoundError:
            found[column] = None
    return found


def run_row(
    run_id: str,
    kind: str,
    model: str,
    status: str,
    *,
    packages: tuple[str, ...] = tuple(PACKAGES),
    **fields: Any,
) -> dict[str, Any]:
    """A `runs` row: the given columns, geowh's version, the `packages` versions and, while
    running, the host and pid that run it (so that a killed run's row is seen as stale).

    The one place a run row is built: the ingest engine, toy runs and imports all call it.
    """
    from geowh import __version__

    return {
        "run_id": run_id, "kind": kind, "model": model, "status": status, "geowh_version": __version__,
        "code_commit": code_commit(),
    } | package_versions(packages) | this_process() | fields


def config_key(config: Mapping[str, Any]) -> str:
    """runs.config_key: a hash of what decides a run's numbers (as JSON, keys sorted), 16 hex digits.

    The one key function: the ingest engine, toy runs and recompute key their runs with it.
    """
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@cache
def code_commit() -> str | None:
    """The git commit of the geowh checkout this process runs, `-dirty` appended when tracked
    files differ from it; None when geowh is not run from its own checkout (an installed package,
    no git). Recorded in every run row, never in a config key: a commit that changes no metric
    definition changes no number, and must not make every checkpoint be measured again.
    """
    import subprocess

    root = Path(__file__).resolve().parents[1]  # the package folder, the repository root in a checkout
    if not (root / ".git").exists():  # installed into site-packages (or a checkout of something else)
        return None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def this_process() -> dict:
    """The `host` and `pid` columns of a run this process starts."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def is_stale(host: str | None, pid: int | None, started_at: datetime | None, now: datetime | None = None) -> bool:
    """Whether a `running` row with these columns has no process behind it any more."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    if host is None or pid is None:
        return True
    if host != socket.gethostname():
        return started_at is None or now - started_at > STALE_AFTER
    return not _runs_since(int(pid), started_at)


def _runs_since(pid: int, started_at: datetime | None) -> bool:
    """Whether process `pid` lives (not a zombie) and was started no later than `started_at`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():  # not Linux: the signal check is all there is
        return True
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
            return False
        if started_at is None:
            return True
        ticks = int(fields[19])  # starttime, clock ticks after boot
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        began = datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC).replace(tzinfo=None)
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return began <= started_at + timedelta(seconds=2)  # a later process reuses the pid


def running_rows(con, model: str | None = None) -> list[tuple[str, bool]]:
    """(run_id, stale) of every `running` row (of `model`), read on an open connection."""
    columns = {r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() AND table_name = 'runs'"
    ).fetchall()}
    who = "host, pid" if "host" in columns else "NULL, NULL"  # a warehouse not yet migrated to 4
    where, params = ("AND model = ?", [model]) if model is not None else ("", [])
    rows = con.execute(f"SELECT run_id, {who}, started_at FROM runs WHERE status = 'running' {where}", params).fetchall()
    return [(run_id, is_stale(host, pid, started)) for run_id, host, pid, started in rows]
