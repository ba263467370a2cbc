"""Where the checkpoints come from: series (registry families, hub repos, run folders), models
(loading one checkpoint), probes (the texts measured)."""
