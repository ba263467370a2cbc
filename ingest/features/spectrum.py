"""The spectrum of a feature matrix, streamed (METHOD.md §2–3); its metrics are in `geowh.spectrum_math`.

Features stream through `Covariance` one block of rows at a time, so a probe of any size
needs one (d, d) float64 matrix, never the (M, d) one. Its eigenvalues are the spectrum the
authors got from PCA (`explained_variance_ratio_` of the centred M×d matrix, up to the
scale, which cancels in every metric).

    cov = Covariance(d)
    for block in blocks:            # (batch, d) numpy arrays or torch tensors
        cov.update(block)
    values = compute_metrics(cov.eigenvalues())
    metrics_dict(values)            # {"rankme": …, "alpha_req": …, "alpha_req_r2": …, …}

torch is imported only when a torch tensor arrives (a GPU ingest accumulates on the GPU);
numpy arrays go through BLAS `dsyrk`, the symmetric rank-k update, half the FLOPs of FᵀF.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg.blas import dsyr, dsyrk

from geowh.errors import InputError
from geowh.spectrum_math import (
    _EPS64,
    CHUNK_ROWS,
    MetricValue,
    _eigvalsh,
    _is_torch,
    compute_metrics,
    gram_eigenvalues,
    metrics_dict,
)

# --------------------------------------------------------------------------------------
# Streaming covariance
# --------------------------------------------------------------------------------------


def _nonfinite_error(rows: np.ndarray, what: str = "this block") -> InputError:
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1)) if rows.dtype.kind == "f" else []
    where = f" (first at row {int(bad[0])} of {what}, {len(bad)} rows in all)" if len(bad) else ""
    return InputError(
        f"features contain NaN or infinite values{where}: the spectrum is undefined. "
        "Fix the extraction (fp16 overflows easily: extract in bf16 or fp32) or drop those rows."
    )


class Covariance:
    """Streaming covariance of feature rows, accumulated in float64.

    `update` takes (batch, d) blocks (numpy arrays or torch tensors of any float dtype,
    bf16/fp16 included) and adds their count, column sum and Gram matrix; `merge` or `+`
    combine accumulators built on disjoint rows (workers, shards) into the one that all
    rows streamed into a single accumulator would give.

    Sums are taken of F − s, where the shift s is the first block's column mean: the
    covariance does not depend on s, and without it FᵀF − nμμᵀ cancels catastrophically
    on hidden states, which have dimensions whose mean is hundreds of standard deviations.

    The first block decides where the sums live: numpy (CPU, dsyrk on the upper triangle)
    for numpy input, torch on the tensor's device for a tensor. Later blocks of the other
    kind are moved there.

    Example:
        cov = Covariance(2048)
        for block in blocks:
            cov.update(block)           # (batch, 2048)
        lam = cov.eigenvalues()          # (min(n, 2048),) descending
    """

    def __init__(self, d: int):
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InputError(f"Covariance(d) needs the feature width as a positive integer, got {d!r}.")
        self._d = int(d)
        self._n = 0
        self._shift: Any = None  # (d,) first block's column mean
        self._sum: Any = None  # (d,) Σ(F − shift)
        self._gram: Any = None  # (d, d) Σ(F − shift)ᵀ(F − shift); numpy: upper triangle only
        self._device: Any = None  # None: numpy; else the torch.device the sums live on
        self._pending: list[np.ndarray] = []  # numpy: centred float64 blocks not yet in _gram
        self._pending_rows = 0

    @property
    def n(self) -> int:
        """Rows accumulated so far."""
        return self._n

    @property
    def d(self) -> int:
        """Feature width."""
        return self._d

    @property
    def device(self) -> str:
        """Where the sums live: "numpy" or a torch device such as "cuda:0"."""
        return "numpy" if self._device is None else str(self._device)

    def __repr__(self) -> str:
        return f"Covariance(d={self._d}, n={self._n}, device={self.device!r})"

    # ---- accumulate -----------------------------------------------------------------

    def update(self, features: Any) -> Covariance:
        """Add a (batch, d) block of rows; returns self.

        Raises InputError, leaving the accumulator unchanged, for a block that is not 2-D,
        has another width, is not numeric, or holds NaN/inf.
        """
        if self._gram is None and _is_torch(features):
            self._device = features.device
        if self._device is None:
            if _is_torch(features):
                import torch

                features = features.detach().to("cpu", torch.float64).numpy()
            self._update_numpy(features)
        else:
            self._update_torch(features)
        return self

    def _check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) != 2:
            raise InputError(
                f"a features block must be 2-D (rows, d); got shape {tuple(shape)}. "
                "Pool the sequence dimension first, or pass one layer at a time."
            )
        if shape[1] != self._d:
            raise InputError(
                f"a features block has {shape[1]} columns but this Covariance has d={self._d}: "
                "every block must come from the same layer of the same model."
            )

    def _update_numpy(self, features: Any) -> None:
        x = np.asarray(features)
        self._check_shape(x.shape)
        if x.dtype.kind not in "fiub":
            try:
                x = x.astype(np.float64)
            except (TypeError, ValueError) as e:
                raise InputError(f"features must be numeric; got dtype {x.dtype}.") from e
        if x.shape[0] == 0:
            return
        shift = self._shift if self._shift is not None else x.mean(axis=0, dtype=np.float64)
        # The one float64 copy of the block, C-ordered so that its transpose is the
        # Fortran-ordered (d, batch) operand dsyrk reads without copying again.
        xs = np.empty(x.shape, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf are reported just below
            np.subtract(x, shift, out=xs)
            s = xs.sum(axis=0)
        # NaN/inf anywhere reach the column sums: checking d numbers checks the block.
        if not np.isfinite(s).all():
            raise _nonfinite_error(x)
        if self._gram is None:
            self._gram = np.zeros((self._d, self._d), dtype=np.float64, order="F")
            self._sum = np.zeros(self._d, dtype=np.float64)
            self._shift = shift
        self._pending.append(xs)
        self._pending_rows += xs.shape[0]
        self._sum += s
        self._n += x.shape[0]
        if self._pending_rows >= CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Add the gathered blocks to the Gram matrix in one rank-k update."""
        if not self._pending:
            return
        xs = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)  # (rows, d)
        self._pending, self._pending_rows = [], 0
        # xs is C-ordered, so xsᵀ is the Fortran-ordered (d, rows) operand dsyrk reads in place.
        self._gram = dsyrk(1.0, xs.T, beta=1.0, c=self._gram, trans=0, lower=0, overwrite_c=1)

    def _update_torch(self, features: Any) -> None:
        import torch

        if _is_torch(features):
            x = features.detach()
        else:
            try:
                x = torch.from_numpy(np.array(features, dtype=np.float64))
            except (TypeError, ValueError) as e:
                raise InputError(f"features must be numeric; got {type(features).__name__}.") from e
        self._check_shape(tuple(x.shape))
        if x.is_complex():
            raise InputError(f"features must be real; got dtype {x.dtype}.")
        if x.shape[0] == 0:
            return
        xs = x.to(self._device, torch.float64)  # (batch, d)
        shift = self._shift if self._shift is not None else xs.mean(dim=0)
        xs = xs.sub_(shift) if xs.data_ptr() != x.data_ptr() else xs - shift
        s = xs.sum(dim=0)
        if not bool(torch.isfinite(s).all()):
            raise _nonfinite_error(x.to("cpu", torch.float64).numpy())
        if self._gram is None:
            self._gram = torch.zeros(self._d, self._d, dtype=torch.float64, device=self._device)
            self._sum = torch.zeros(self._d, dtype=torch.float64, device=self._device)
            self._shift = shift
        self._gram.addmm_(xs.T, xs)
        self._sum += s
        self._n += x.shape[0]

    # ---- combine ---------------------------------------------------------------------

    def _here(self, a: Any) -> Any:
        """`a` (numpy or torch) moved to where this accumulator's sums live."""
        if self._device is None:
            return a.detach().to("cpu").numpy() if _is_torch(a) else a
        import torch

        return (a if _is_torch(a) else torch.from_numpy(np.ascontiguousarray(a))).to(self._device)

    def _centred(self) -> tuple[Any, Any, Any]:
        """(mean, C, full) with C = Σ(F − mean)ᵀ(F − mean); numpy C is valid in its upper triangle."""
        mean = self._shift + self._sum / self._n
        if self._device is None:
            self._flush()
            c = np.array(self._gram, order="F")
            c = dsyr(-1.0 / self._n, self._sum, lower=0, a=c, overwrite_a=1)
        else:
            c = self._gram - self._sum.outer(self._sum) / self._n
        return mean, c, self._device is not None

    def copy(self) -> Covariance:
        """An independent accumulator with the same state."""
        self._flush()
        new = Covariance(self._d)
        new._n, new._device = self._n, self._device
        if self._gram is not None:
            new._shift, new._sum, new._gram = (
                a.clone() if _is_torch(a) else a.copy(order="K") for a in (self._shift, self._sum, self._gram)
            )
        return new

    def merge(self, other: Covariance) -> Covariance:
        """Add another accumulator's rows to this one (in place); returns self.

        Uses the pairwise update of Chan, Golub & LeVeque (1979): C = C_a + C_b +
        n_a·n_b/n · (μ_a − μ_b)(μ_a − μ_b)ᵀ, so the result equals streaming all rows into
        one accumulator, up to rounding. The two may live on different devices; the result
        stays on this one's.
        """
        if not isinstance(other, Covariance):
            raise TypeError(f"can only merge a Covariance, not {type(other).__name__}")
        if other._d != self._d:
            raise InputError(f"cannot merge covariances of width {self._d} and {other._d}: different layers or models.")
        if other._n == 0:
            return self
        if self._n == 0:  # nothing here yet: take the other's state as it is
            state = other.copy()
            self._n, self._device = state._n, state._device
            self._shift, self._sum, self._gram = state._shift, state._sum, state._gram
            return self
        na, nb = self._n, other._n
        n = na + nb
        mean_a, ca, _ = self._centred()
        mean_b, cb, full_b = other._centred()
        if not full_b and self._device is not None:
            cb = np.triu(cb) + np.triu(cb, 1).T  # torch's eigvalsh reads the lower triangle
        mean_b, cb = self._here(mean_b), self._here(cb)
        if self._device is None and full_b:
            cb = np.asfortranarray(cb)
        delta = mean_b - mean_a
        gram = ca + cb
        w = na * nb / n
        if self._device is None:
            gram = dsyr(w, delta, lower=0, a=np.asfortranarray(gram), overwrite_a=1)
            mean = mean_a + delta * (nb / n)
            self._sum = np.zeros(self._d)
        else:
            gram += w * delta.outer(delta)
            mean = mean_a + delta * (nb / n)
            self._sum = mean.new_zeros(self._d)
        # Re-centred on the merged mean: the sums are now of F − mean, whose sum is 0.
        self._shift, self._gram, self._n = mean, gram, n
        return self

    def __add__(self, other: Covariance) -> Covariance:
        if not isinstance(other, Covariance):
            return NotImplemented
        return self.copy().merge(other)

    def __radd__(self, other: Any) -> Covariance:
        # sum([a, b, c]) starts from 0.
        if isinstance(other, int) and other == 0:
            return self.copy()
        return NotImplemented

    # ---- read ------------------------------------------------------------------------

    def mean(self) -> np.ndarray:
        """Column mean of all rows, numpy float64 (d,)."""
        self._need_rows(1, "a mean")
        mean = self._shift + self._sum / self._n
        return mean.cpu().numpy() if _is_torch(mean) else mean

    def covariance(self) -> np.ndarray:
        """Centred covariance (FᵀF − n·μμᵀ)/n as numpy float64 (d, d), symmetric."""
        self._need_rows(1, "a covariance")
        _, c, full = self._centred()
        if full:
            c = c.cpu().numpy()
        else:
            c = np.triu(c) + np.triu(c, 1).T
        return c / self._n

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of the covariance, numpy float64, largest first.

        Only the first min(n, d) are kept (the rest are zero by construction), so the
        spectrum has the length PCA by full SVD of the centred M×d matrix gives. Values
        at or below d·ε·λ₁ — the resolution of a symmetric eigensolver on this matrix,
        the threshold numpy's `matrix_rank` uses — are set to exactly 0, negatives included.
        """
        self._need_rows(2, "eigenvalues")
        _, c, full = self._centred()
        if not bool((c.isfinite() if full else np.isfinite(c)).all()):
            raise InputError("the covariance overflows float64: features are too large (rescale them).")
        if full:
            import torch

            lam = torch.linalg.eigvalsh(c).cpu().numpy()
        else:
            lam = _eigvalsh(c)
        lam = lam[::-1] / self._n
        lam = np.where(lam > max(lam[0], 0.0) * self._d * _EPS64, lam, 0.0)
        return np.ascontiguousarray(lam[: min(self._n, self._d)])

    def _need_rows(self, k: int, what: str) -> None:
        if self._n < k:
            raise InputError(
                f"{what} need{'s' if what.startswith('a ') else ''} at least {k} row{'s' if k > 1 else ''} "
                "of features; "
                f"this Covariance has {self._n}. Stream more rows with update()."
            )


# --------------------------------------------------------------------------------------
# Feature files
# --------------------------------------------------------------------------------------

SUFFIXES = (".npy", ".safetensors", ".parquet")


def load_features(path: str | Path, key: str | None = None) -> np.ndarray:
    """A (samples, d) feature matrix from .npy, .safetensors or .parquet.

    .npy is memory-mapped (a matrix larger than RAM streams from disk). .safetensors holds
    one tensor, or `key` names it (bf16 is read through torch, as float32). .parquet: one
    list/array column (or the one `key` names) with a vector per row, else all numeric
    columns. Raises InputError for a missing file, an unknown suffix, data that is not
    2-D, or NaN/inf.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"features file {path} does not exist: check the path.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        x = _load_npy(path)
    elif suffix == ".safetensors":
        x = _load_safetensors(path, key)
    elif suffix == ".parquet":
        x = _load_parquet(path, key)
    else:
        raise InputError(f"cannot read features from {path.name}: use one of {', '.join(SUFFIXES)}.")
    if x.ndim != 2:
        raise InputError(
            f"features in {path.name} have shape {x.shape}; need 2-D (samples, d). "
            "Save one layer per file, pooled to one vector per sample."
        )
    if x.dtype.kind not in "fiu":
        raise InputError(f"features in {path.name} have dtype {x.dtype}; need numbers.")
    if x.dtype.kind == "f":
        for i in range(0, x.shape[0], CHUNK_ROWS):
            block = x[i : i + CHUNK_ROWS]
            if not np.isfinite(block).all():
                bad = i + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                raise InputError(
                    f"features in {path.name} contain NaN, null or infinite values (first at row {bad}): "
                    "fix the extraction or drop those rows."
                )
    return x


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"cannot read {path.name} as a numpy array: {e}") from e


def _load_safetensors(path: Path, key: str | None) -> np.ndarray:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            names = list(f.keys())
            name = _pick(names, key, path, "tensor")
            dtype = f.get_slice(name).get_dtype()
            if dtype.upper() not in ("BF16", "F8_E4M3", "F8_E5M2"):
                return f.get_tensor(name)
    except InputError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for a bad file
        raise InputError(f"cannot read {path.name} as safetensors: {e}") from e
    # numpy has no bf16/fp8: read through torch and widen to float32 (exact).
    import torch

    with safe_open(path, framework="pt") as f:
        return f.get_tensor(name).to(torch.float32).numpy()


def _pick(names: list[str], key: str | None, path: Path, what: str) -> str:
    if key is not None:
        if key not in names:
            raise InputError(f"{path.name} has no {what} {key!r}; it has: {', '.join(names) or 'none'}.")
        return key
    if len(names) != 1:
        raise InputError(
            f"{path.name} holds {len(names)} {what}s ({', '.join(names) or 'none'}): name the one to use with key=."
        )
    return names[0]


def _load_parquet(path: Path, key: str | None) -> np.ndarray:
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several error types for a bad file
        raise InputError(f"cannot read {path.name} as parquet: {e}") from e
    nested = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Array))]
    if key is not None or nested:
        col = _pick(nested if key is None else list(df.columns), key, path, "list column")
        s = df[col]
        if s.null_count():
            raise InputError(f"column {col!r} of {path.name} has null rows: drop them or fill them.")
        if isinstance(s.dtype, pl.List):
            widths = s.list.len().unique()
            if widths.len() != 1:
                raise InputError(f"rows of column {col!r} in {path.name} have different lengths: {sorted(widths)[:5]}.")
            s = s.cast(pl.Array(s.dtype.inner, int(widths[0])))
        if not isinstance(s.dtype, pl.Array):
            raise InputError(f"column {col!r} of {path.name} is not a list of numbers per row (dtype {s.dtype}).")
        if s.dtype.inner.is_numeric() and s.explode().null_count():
            raise InputError(f"column {col!r} of {path.name} has null values inside its vectors.")
        return s.to_numpy()
    numeric = df.select(pl.selectors.numeric())
    if numeric.width == 0:
        raise InputError(f"{path.name} has no numeric columns and no list column of feature vectors.")
    return numeric.to_numpy()



def spectrum_bytes(n: int, d: int) -> tuple[str, int]:
    """How `metrics_of_file` gets the spectrum of an (n, d) matrix and about how many bytes it needs.

    Covariance: the (d, d) accumulator and its centred copy, and the rows gathered for one
    update (twice, while they are joined). Gram: the centred (n, d) float64 matrix and the
    (n, n) Gram matrix with its copy. Solver workspace is small.
    """
    if n < d:
        return "gram", 8 * (n * d + 2 * n * n)
    return "covariance", 8 * (2 * d * d + 2 * min(n, CHUNK_ROWS) * d)


BLAS_BUFFERS = 512 * 2**20
"""OpenBLAS's own work buffers (tens of MB per thread), allowed for generously: an allocation
OpenBLAS cannot get inside a kernel is a SIGSEGV, not an error Python could report."""
HEADROOM = 0.8
"""Of the memory available, the share a spectrum may plan to use: the estimate is of the large
arrays only, and other processes allocate meanwhile."""


def available_bytes() -> int | None:
    """Memory the system can give without swapping (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def spectrum_of_file(path: str | Path, *, key: str | None = None, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """The covariance spectrum of a feature file: streamed through `Covariance` (d x d), or through
    the Gram matrix (n x n) when the file has fewer rows than columns. Refused, with the
    estimate, when even the smaller of the two does not fit in the memory available.
    """
    x = load_features(path, key=key)
    n, d = x.shape
    how, needed = spectrum_bytes(n, d)
    # A memory-mapped .npy is read from the page cache as it streams; any other format is held whole.
    held = 0 if isinstance(x, np.memmap) else x.nbytes
    free = available_bytes()
    what = "the n x n Gram matrix" if how == "gram" else "the d x d covariance"

    def too_large(detail: str) -> InputError:
        return InputError(
            f"the spectrum of {Path(path).name} ({n:,} x {d:,}) needs about {needed / 2**30:.1f} GiB ({what}), "
            f"{detail}: use fewer rows or columns (pool or project the features), or a machine with more memory."
        )

    if free is not None and needed + BLAS_BUFFERS > HEADROOM * (free + held):  # what loading the file took is counted in
        raise too_large(f"more than {HEADROOM:.0%} of the {(free + held) / 2**30:.1f} GiB of memory available")
    try:
        if how == "gram":
            return gram_eigenvalues(x, chunk_rows)
        cov = Covariance(d)
        for i in range(0, n, chunk_rows):
            cov.update(x[i : i + chunk_rows])
        return cov.eigenvalues()
    except MemoryError:  # other processes took the memory meanwhile
        raise too_large("more than this machine could give now") from None


def metric_values_of_file(
    path: str | Path,
    *,
    key: str | None = None,
    names: Iterable[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    **overrides: Any,
) -> list[MetricValue]:
    """Every registered metric of a feature file with its parameters (a `reason` where it is NaN)."""
    return compute_metrics(spectrum_of_file(path, key=key, chunk_rows=chunk_rows), names=names, **overrides)


def metrics_of_file(
    path: str | Path,
    *,
    key: str | None = None,
    names: Iterable[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    **overrides: Any,
) -> dict[str, float]:
    """Every registered metric of a feature file: load, its spectrum (`spectrum_of_file`),
    compute_metrics, metrics_dict.

    Example:
        metrics_of_file("features.npy", max_components=None)
    """
    return metrics_dict(metric_values_of_file(path, key=key, names=names, chunk_rows=chunk_rows, **overrides))
