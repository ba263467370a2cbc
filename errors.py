"""The one error type geowh raises for failures a user can act on.

The CLI catches `GeowhError` in one place and prints its message (cause and fix) without a
traceback; anything else is a bug and keeps its traceback.
"""


class GeowhError(Exception):
    """An expected failure: the message says what went wrong and what to do."""


class WarehouseError(GeowhError):
    """The warehouse file cannot be opened, migrated, read or written as asked."""


class InputError(GeowhError):
    """A file, name or option given by the user cannot be used."""


class OutputError(InputError):
    """An output file cannot be written where asked (refused, or the write failed)."""


class CheckpointError(GeowhError):
    """One checkpoint could not be processed (download, weights, memory, NaN features)."""
