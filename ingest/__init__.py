"""Produces the warehouse's rows: checkpoint series → probe features → spectra and metrics.

torch and transformers are imported inside the functions that need them, never here.
"""

from geowh.ingest.models import load_checkpoint
from geowh.ingest.run import (
    Events, Executor, IngestConfig, IngestSummary, Measurement, Selection, ingest, process_checkpoint, write_result,
)

__all__ = [
    "Events", "Executor", "IngestConfig", "IngestSummary", "Measurement", "Selection", "ingest", "load_checkpoint",
    "process_checkpoint", "write_result",
]
