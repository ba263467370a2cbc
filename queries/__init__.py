"""Analyses over the warehouse: imports, phases, correlations, plots. Never imports torch/transformers.

Each function takes a `Warehouse` and returns a polars DataFrame; the `geowh` commands of the
same names are thin wrappers around them. A function named as its module is imported from the
module (`from geowh.queries.phases import phases`): re-exported here, it would hide the module
(`geowh.queries.phases` would be the function), so only the other names are.
"""

from geowh.queries.evals import import_evals, read_results
from geowh.queries.imports import import_metrics
from geowh.queries.phases import PhaseParams, phase_map, segment

__all__ = ["PhaseParams", "import_evals", "import_metrics", "phase_map", "read_results", "segment"]
