"""`geowh` (the console script) and `python -m geowh`: the CLI, with Ctrl-C handled from the first line.

Typer, rich and the commands take a second or more to import on a loaded machine, and geowh's
own signal handling (`geowh.signals`, installed around each command) only starts after that. So
the very first thing the command does, before importing any of it, is install a handler that
ends the process as a signal during a command does: one line, exit 130 (SIGTERM: 143), never a
KeyboardInterrupt traceback from inside some import. Nothing has been done yet, so nothing is
lost. It is installed here, not in `geowh.cli`, so that importing the CLI (tests, notebooks)
never changes a process's signal handlers.
"""

import os
import signal


def _stop(signum: int, frame) -> None:
    os.write(2, f"stopped by {signal.Signals(signum).name} while geowh was starting (or exiting): nothing was lost\n".encode())
    # No exception: one raised here would surface inside whatever import is running, where a
    # library may catch it, and Click turns a KeyboardInterrupt into "Aborted!" with exit 1.
    os._exit(128 + signum)


def main() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _stop)
    from geowh.allocator import reuse_freed_memory

    reuse_freed_memory()  # every command: large tensors reuse freed memory instead of re-faulting it
    from geowh.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
