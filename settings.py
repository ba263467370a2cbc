"""Paths and defaults, read from the environment in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    db: Path
    """The warehouse file (`GEOWH_DB`, default `./geowh.duckdb`)."""
    home: Path
    """Caches: probe texts, indexes, demo runs (`GEOWH_HOME`, default `~/.cache/geowh`)."""

    @classmethod
    def from_env(cls) -> Settings:
        home = os.environ.get("GEOWH_HOME") or Path.home() / ".cache" / "geowh"
        return cls(db=Path(os.environ.get("GEOWH_DB", "geowh.duckdb")), home=Path(home))


def settings() -> Settings:
    return Settings.from_env()
