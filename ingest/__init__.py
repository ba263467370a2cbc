"""Produces the warehouse's rows: checkpoint series → probe features → spectra and metrics.

torch and transformers are imported inside the functions that need them, never here.
"""

from geowh.ingest.models import load_checkpoint
from geowh.ingest.run import IngestSummary, Measurement, ingest, process_checkpoint, write_result

__all__ = ["IngestSummary", "Measurement", "ingest", "load_checkpoint", "process_checkpoint", "write_result"]
