"""The settings of a run, one frozen dataclass per job: validated when built, their defaults the
single source the CLI reads. Light on purpose (no torch, no warehouse): the CLI imports it to
declare its options, and `geowh sql` must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from geowh.errors import InputError
from geowh.ingest.sources.probes import DEFAULT_MAX_LEN, DEFAULT_MIN_LEN, DEFAULT_N, DEFAULT_SEED

MIN_SUBSET_ROWS = 16
"""Fewest probe sequences in one `--subsets` part: RankMe of r rows is at most r, so a metric of
2-row parts is a count, not a measurement (n = 64 into 32 parts stored RankMe 1.0)."""


@dataclass(frozen=True)
class IngestConfig:
    """Every setting of an ingest. Those in `key_fields` decide whether a result can be reused."""

    probe: str = "fineweb"
    n: int = DEFAULT_N
    max_len: int = DEFAULT_MAX_LEN
    min_len: int = DEFAULT_MIN_LEN
    seed: int = DEFAULT_SEED
    layers: str = "last"
    pooling: str = "last"
    subsets: int = 0
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    tokenizer: str | None = None
    save_features: str | None = None
    loss: bool = False
    geometry: bool = True
    """Off: the probe settings are unused and only the measurements run (`geowh memorize`)."""

    # device, batch size and where features are saved do not change the numbers.
    key_fields = ("probe", "n", "max_len", "min_len", "seed", "layers", "pooling", "subsets", "dtype", "tokenizer", "loss")

    def __post_init__(self) -> None:
        """Refuse a setting that cannot work before anything is loaded or written."""
        from geowh.ingest.features.extract import parse_poolings
        from geowh.ingest.sources.models import DTYPES

        if self.geometry and isinstance(self.n, int) and self.n == 1:
            raise InputError("--n 1: a spectrum needs at least 2 probe sequences; give --n 2 or more")
        for option, value, least in (("--n", self.n, 1), ("--max-len", self.max_len, 1), ("--min-len", self.min_len, 0),
                                     ("--seed", self.seed, 0), ("--batch-size", self.batch_size, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise InputError(f"{option} {value}: give a whole number of at least {least}")
        if self.subsets == 1 or self.subsets < 0:
            raise InputError(f"--subsets {self.subsets}: K needs K ≥ 2 disjoint parts (0 = off)")
        if self.subsets > self.n:
            raise InputError(f"--subsets {self.subsets}: more parts than the --n {self.n} probe sequences")
        if self.subsets and self.n // self.subsets < MIN_SUBSET_ROWS:
            raise InputError(
                f"--subsets {self.subsets}: parts of {self.n // self.subsets} of the --n {self.n} sequences; a part needs at "
                f"least {MIN_SUBSET_ROWS} (RankMe cannot exceed a part's rows, so smaller parts measure their size): "
                f"use --subsets ≤ {max(2, self.n // MIN_SUBSET_ROWS)}, or a larger --n"
            )
        layers = self.layers.strip()
        items = [x.strip() for x in layers.split(",")]
        if layers not in ("last", "all") and not (all(x.lstrip("-").isdigit() for x in items) and items):
            raise InputError(f"--layers {self.layers!r}: use last, all or a list of indices such as 0,6,12")
        parse_poolings(self.pooling)
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype}: use one of {', '.join(DTYPES)}")
        if not str(self.probe).strip():
            raise InputError("--probe is empty: give fineweb, wikitext, or a .txt/.jsonl/.parquet file")
        if self.save_features is not None:
            _check_folder_path("--save-features", self.save_features)


def _check_folder_path(option: str, path: str) -> None:
    """A folder that can be created or exists: refused now, not after hours of computing."""
    from pathlib import Path

    here = Path(path).expanduser()
    for place in (here, *here.parents):
        if place.exists():
            if not place.is_dir():
                what = "is" if place == here else f"lies under {place}, which is"
                raise InputError(f"{option} {path} {what} a file, not a folder: give a folder to save the features in")
            return


@dataclass(frozen=True)
class Selection:
    """Which checkpoints of the series to run."""

    checkpoints: str = "all"
    """all, a list (step1000,step2000), a step range START:END[:STRIDE] or log:N."""
    revisions: tuple[str, ...] | None = None
    """hf: models: the hub revisions to consider (default: all branches)."""
    name: str | None = None
    """The model's name in the warehouse (default: the folder's or registry name)."""


@dataclass(frozen=True)
class MemorizeConfig:
    """Every setting of `geowh memorize`; its defaults are the command's."""

    task: str
    """triviaqa, or a local .jsonl with question and answer."""
    index: str
    """The infini-gram index folder."""
    index_tokenizer: str | None = None
    batch_size: int = 32
    limit: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        for option, value in (("--batch-size", self.batch_size), ("--limit", self.limit)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"{option} {value}: give a whole number of at least 1")
        self.engine()  # checks --dtype (and the rest) as an ingest does

    def engine(self) -> IngestConfig:
        """The engine's config: geometry off, the model settings of this one."""
        return IngestConfig(device=self.device, dtype=self.dtype, tokenizer=self.tokenizer, geometry=False)
