"""Analyses over the warehouse: imports, phases, correlations, plots. Never imports torch/transformers.

Each function takes a `Warehouse` and returns a polars DataFrame; the `geowh` commands of the
same names are thin wrappers around them.
"""

from geowh.queries.correlate import correlate
from geowh.queries.evals import import_evals, read_results
from geowh.queries.imports import import_metrics
from geowh.queries.phases import PhaseParams, phase_map, phases, segment
from geowh.queries.plot import plot
from geowh.queries.report import report

__all__ = ["PhaseParams", "correlate", "import_evals", "import_metrics", "phase_map", "phases", "plot", "read_results", "report", "segment"]
