"""Ctrl-C and SIGTERM: stop promptly, but never in the middle of a write.

`handle_signals()` (the CLI wraps every command in it) turns SIGINT and SIGTERM into an
`Interrupted` exception, a KeyboardInterrupt that knows its signal, so that the shell sees exit
code 130 or 143. Inside `deferred()` (a warehouse transaction) a signal is only noted and raised
when the block ends, so a commit is never cut in half.

A signal can arrive inside a C extension (DuckDB, tokenizers) that turns the KeyboardInterrupt
into an error of its own; `received()` still says that the process was asked to stop, so that
such an error is reported as the interrupt it is, not as a failure.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_received: int | None = None
_count = 0  # signals received: a deferred block raises only for one that came during it
_deferring = 0


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by `signum` (SIGINT or SIGTERM)."""

    detail: str | None = None
    """What the stopped command had done, for its stop message (set by the command that stopped)."""

    def __init__(self, signum: int = signal.SIGINT, after_block: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.after_block = after_block
        """Raised by `deferred()` once its block had finished: what the block wrote is stored."""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def received() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _received


def _handler(signum: int, frame) -> None:
    global _received, _count
    _received, _count = signum, _count + 1
    if not _deferring:
        raise Interrupted(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread for the duration of the block."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """A block a signal does not cut: it is raised once the block has finished."""
    global _deferring
    before = _count
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _count != before:
        assert _received is not None  # _count only grows in _handler, which sets _received
        raise Interrupted(_received, after_block=True)


def interrupted_by(error: BaseException) -> Interrupted | None:
    """`error` as an `Interrupted` when a signal caused it (directly or wrapped by a library), else None."""
    if isinstance(error, Interrupted):
        return error
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return Interrupted(_received or signal.SIGINT)
        seen = seen.__cause__ or seen.__context__
    return Interrupted(_received) if _received is not None else None
