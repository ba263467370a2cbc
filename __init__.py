"""geowh: a representation-geometry warehouse for language-model training dynamics."""

__version__ = "0.1.0"
