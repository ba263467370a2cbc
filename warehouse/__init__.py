"""Stores and serves geowh's rows: DuckDB in, polars out. Never imports torch or transformers."""

from geowh.warehouse.names import canonical_model
from geowh.warehouse.store import TABLE_KEYS, Warehouse, as_warehouse, refuse_writes, utcnow

__all__ = ["TABLE_KEYS", "canonical_model", "Warehouse", "as_warehouse", "refuse_writes", "utcnow"]
