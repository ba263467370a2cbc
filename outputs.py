"""Output files that never destroy inputs and are never left half-written.

Every file geowh writes for the user (`sql --out`, `export`, `plot --out`, `index build`) goes
through `output_path`: the target is checked first (not a folder, not a device, not the
warehouse, not an existing file unless forced), the content is written to a hidden temporary
name in the same folder, and only a complete file is renamed onto the target. A full disk,
an exception or Ctrl-C leaves the target as it was.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from geowh.errors import OutputError


def check_output(path: str | Path, force: bool = False, protect: Iterable[str | Path] = (),
                 folder: bool = False) -> Path:
    """`path` if geowh may write it, else OutputError naming why (and what to do)."""
    path = Path(path)
    what = "folder" if folder else "file"
    for kept in protect:
        if _same(path, Path(kept)):
            raise OutputError(f"{path} is the warehouse itself: write the output to another {what}")
        # DuckDB's write-ahead log holds the warehouse's last commits until the next checkpoint
        if _same(path, Path(f"{kept}.wal")):
            raise OutputError(f"{path} is the warehouse's write-ahead log, part of it: write the output to another {what}")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{parent} is not an existing folder: create it first, or write {path.name} elsewhere")
    if path.is_symlink() or path.exists():
        if not folder and path.is_dir():
            raise OutputError(f"{path} is a folder: give a file name, e.g. {path / ('out' + (path.suffix or '.csv'))}")
        if folder and not path.is_dir():
            raise OutputError(f"{path} exists and is not a folder: give a new folder name")
        if folder and any(path.iterdir()):
            raise OutputError(f"{path} is not empty: give a new folder, or delete this one")
        if not folder and not path.is_file():
            raise OutputError(f"{path} is not a regular file (a device or socket): write to a file")
        if not force and not folder:
            raise OutputError(f"{path} already exists: pass --force to replace it, or choose another name")
    return path


@contextmanager
def output_path(path: str | Path, force: bool = False, protect: Iterable[str | Path] = (),
                folder: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write into; renamed onto `path` when the block succeeds.

    `folder=True` yields a temporary folder (an index), renamed as a whole. On any failure the
    temporary file or folder is removed and an OSError (disk full, permission) becomes one
    OutputError line.

        with output_path("fig.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = check_output(path, force, protect, folder)
    _remove_orphans(path)
    prefix = f".{path.name}.{os.getpid()}@{_HOST}."
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
        # mkstemp/mkdtemp make private (0600/0700) entries; the output gets the usual mode.
        os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        yield tmp
        os.replace(tmp, path)  # onto an empty folder too: rename(2) allows it
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
        raise


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
"""This machine, in a temporary's name: a process id means something only on its own host."""


def write_text(path: Path, text: str) -> None:
    """A run's own file (a config, a log, a manifest) written whole: a partial name, then a rename onto
    `path`, so that a crash or Ctrl-C mid-write leaves the previous file, never half of a new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def write_json(path: Path, value) -> None:
    """`write_text` of `value` as indented JSON."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def _remove_orphans(path: Path) -> None:
    """Remove the temporaries of `path` left by a process of this host that is gone (kill -9).

    Nothing else removes them (a kill -9 leaves no chance to): an 11 MB half-built index folder
    stayed beside its target through every rerun. A temporary of a process still running (a
    concurrent build) or of another host is left alone.
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*@{_HOST}.*.partial"):
        pid = tmp.name[len(path.name) + 2 :].split("@", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False
