"""The per-checkpoint measurements: geometry, memorization (with its QA tasks and statistics)."""
