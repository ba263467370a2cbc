"""The `geowh` command: each command is one call into the library and a rendering of its result.

Each module below adds its commands to the one Typer app; the import order is the order of
`geowh --help`, which follows the flow ingest → warehouse → queries.
"""

import sys  # noqa: I001  (the command modules below are imported in help order, see above)

from geowh.cli.common import app, bare_options
from geowh.cli import ingest, watch, spectrum, memorization, toy, train, demo, warehouse, queries  # noqa: F401  (registers commands)


def main() -> None:
    app(args=bare_options(sys.argv[1:]))


__all__ = ["app", "main"]
