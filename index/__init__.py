"""∞-gram indexes: building one (build), the opened `Index` (index), its batched search and workers (batch).

Not an ingest: an index is built once from a corpus; memorization (ingest/measurements) reads it.
"""
