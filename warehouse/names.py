"""Model names as users type them: short aliases map to the canonical series name.

Lives in warehouse/ because ingest and queries both take model names, and queries must not
import the ingest registries (they pull in the hub client).
"""

# The product card says `geowh phases --model olmo-7b`; the series are OLMo-2's.
MODEL_ALIASES = {
    "olmo-1b": "olmo-2-1b",
    "olmo-7b": "olmo-2-7b",
    "olmo-13b": "olmo-2-13b",
}


def canonical_model(name: str) -> str:
    """The warehouse's name for a model the user typed (`olmo-7b` → `olmo-2-7b`)."""
    return MODEL_ALIASES.get(name.strip().lower(), name.strip())
