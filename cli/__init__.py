"""The `geowh` command: each command is one call into the library and a rendering of its result.

Each module below adds its commands to the one Typer app; the import order is the order of
`geowh --help`, which follows the flow ingest → warehouse → queries.
"""

from geowh.cli.common import app
from geowh.cli import ingest, watch, spectrum, memorization, toy, train, demo, warehouse, queries  # noqa: F401  (registers commands)


def main() -> None:
    app()


__all__ = ["app", "main"]
