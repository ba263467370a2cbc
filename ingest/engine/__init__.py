"""The run engine: plan, run (process, write, the driver loop), executors (Serial; Ray in cluster), watch."""
