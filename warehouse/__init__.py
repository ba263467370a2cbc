"""Stores and serves geowh's rows: DuckDB in, polars out. Never imports torch or transformers."""

from geowh.warehouse.store import TABLE_KEYS, Warehouse, refuse_writes, utcnow

__all__ = ["TABLE_KEYS", "Warehouse", "refuse_writes", "utcnow"]
