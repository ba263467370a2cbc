"""Metrics from a covariance spectrum, in numpy alone (METHOD.md §2–3): no torch, so
queries/ (`geowh recompute`) can recompute metrics from stored spectra.

The metrics live in `REGISTRY`; adding one is writing one function under `@metric`.
`gram_eigenvalues` gives the spectrum of a short, wide matrix through its (n, n) Gram
matrix. The streaming covariance that feeds these from a model is `geowh.ingest.features.spectrum`.

    values = compute_metrics(eigenvalues, fit_start=10, fit_end=200)
    metrics_dict(values)            # {"rankme": …, "alpha_req": …, "alpha_req_r2": …, …}
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import eigh
from scipy.linalg.blas import dsyrk

from geowh.errors import InputError

_EPS64 = float(np.finfo(np.float64).eps)

# Rows per block when a whole file is streamed, and rows `Covariance` gathers before one
# dsyrk: a rank-k update reads and writes the whole (d, d) accumulator, so batches of 64 rows
# (a forward pass's worth) would spend their time moving it, not multiplying.
CHUNK_ROWS = 2048
# BLAS threads for the eigensolver. Its tridiagonal reduction is thousands of matrix-vector
# products, each a barrier for OpenBLAS's spinning threads: on 2 busy cores (load 8) d = 2048
# took 1.1 s on one thread and 3-25 s on two, with 3-15x the CPU time (docs/scale.md).
EIG_THREADS = 1



def _is_torch(x: Any) -> bool:
    # A tensor can exist only if torch was imported by someone: no import needed to check.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


# --------------------------------------------------------------------------------------
# Metrics registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A registered metric: `fn(eigenvalues, **params) -> (value or {output: value}, extra params)`."""

    name: str
    doc: str
    fn: Callable[..., tuple[Any, dict[str, Any]]]
    defaults: dict[str, Any]
    outputs: tuple[str, ...]
    version: int = 1
    """Bumped when the function computes something else for the same parameters (a formula
    fixed): with the name, outputs and defaults it makes the metric's fingerprint, and a
    changed fingerprint makes `geowh ingest` measure finished checkpoints again."""

    def definition(self) -> dict[str, Any]:
        """What decides this metric's numbers: the part of the registry stored with every run."""
        return {"outputs": list(self.outputs), "defaults": self.defaults, "version": self.version}

    @property
    def fingerprint(self) -> str:
        return _hash(self.definition())


@dataclass
class MetricValue:
    """One number and how it was computed (stored in `metrics.params` as JSON)."""

    metric: str
    value: float
    params: dict[str, Any] = field(default_factory=dict)


REGISTRY: dict[str, Metric] = {}


def metric(fn: Callable | None = None, *, outputs: Sequence[str] | None = None, version: int = 1):
    """Register `fn` under its name. Its keyword-only parameters (with defaults) are the
    metric's params; it gets the cleaned spectrum (descending, ≥ 0, numerical zeros set to
    0) and returns (value, extra) or ({output: value}, extra) for several outputs, where
    `extra` holds what was derived (components used, ranges clipped, a `reason` for NaN).
    Change what `fn` computes and you bump `version` (its defaults are tracked by themselves):
    the runs measured before are then shown stale (`geowh info`) and measured again.
    """

    def register(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        defaults = {
            p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY
        }
        name = fn.__name__
        REGISTRY[name] = Metric(
            name=name,
            doc=inspect.getdoc(fn) or "",
            fn=fn,
            defaults=defaults,
            outputs=tuple(outputs or (name,)),
            version=version,
        )
        return fn

    return register(fn) if fn is not None else register


def _hash(value: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def definitions(names: Iterable[str] | None = None) -> dict[str, str]:
    """{metric: fingerprint} of the registered metrics (all, or `names`): what a run stores in
    its config, so that `geowh info` can name the metrics whose definition changed since."""
    return {name: REGISTRY[name].fingerprint for name in (sorted(REGISTRY) if names is None else sorted(names))}


def definitions_fingerprint(names: Iterable[str] | None = None) -> str:
    """One fingerprint of the registered metrics' definitions (all, or `names`): part of an
    ingest's config key and its `runs.definitions`. It changes when a metric is added, removed,
    renamed, or changes its outputs, a default or its version; nothing else changes it (not a
    commit that leaves the definitions alone)."""
    return _hash(definitions(names))


def registered(output: str) -> str | None:
    """The registered metric that writes `output` (`alpha_req_r2` → alpha_req; a recomputed
    variant `rankme@max_components=all` → rankme), or None for a name the registry does not make."""
    base = output.split("@", 1)[0]
    return next((m.name for m in REGISTRY.values() if base in m.outputs), None)


def _degenerate(lam: np.ndarray) -> str | None:
    if lam.size == 0:
        return "empty spectrum"
    if lam[0] <= 0:
        return "all eigenvalues are zero: the features do not vary across samples"
    return None


def _top(lam: np.ndarray, max_components: int | None) -> np.ndarray:
    if max_components is None:
        return lam
    if isinstance(max_components, bool) or not isinstance(max_components, (int, np.integer)) or max_components < 1:
        raise InputError(f"max_components must be a positive integer or None (full spectrum), got {max_components!r}.")
    return lam[: int(max_components)]


def _entropy(p: np.ndarray, eps: float) -> float:
    # The authors add eps to every pᵢ after normalising (utils/powerlaw.py `rankme`):
    # it keeps log finite for zero eigenvalues and is part of the published numbers.
    q = p + eps
    return float(-np.dot(q, np.log(q)))


@metric
def rankme(lam: np.ndarray, *, eps: float = 1e-7, max_components: int | None = 2048):
    """Effective rank exp(−Σ pᵢ log pᵢ), pᵢ = λᵢ/Σλ + eps over the top max_components eigenvalues
    (the authors' PCA kept 2,048; None = full spectrum)."""
    kept = _top(lam, max_components)
    extra: dict[str, Any] = {"n_components": int(kept.size)}
    if reason := _degenerate(kept):
        return math.nan, extra | {"reason": reason}
    return math.exp(_entropy(kept / kept.sum(), eps)), extra


@metric
def rankme_sv(lam: np.ndarray, *, eps: float = 1e-7, max_components: int | None = 2048):
    """RankMe on singular values σᵢ = √λᵢ, as Garrido et al. (2023) define it; pᵢ = σᵢ/Σσ + eps."""
    kept = _top(lam, max_components)
    extra: dict[str, Any] = {"n_components": int(kept.size)}
    if reason := _degenerate(kept):
        return math.nan, extra | {"reason": reason}
    sigma = np.sqrt(kept / kept[0])  # (divided by λ₁ first: scale-free, no overflow)
    return math.exp(_entropy(sigma / sigma.sum(), eps)), extra


def _check_rank(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a rank ≥ 1 (1-based), got {value!r}.")
    return int(value)


@metric(outputs=("alpha_req", "alpha_req_r2"))
def alpha_req(
    lam: np.ndarray, *, fit_start: int = 12, fit_end: int = 100, r2_start: int | None = None, r2_end: int = 500
):
    """Power-law decay λ_k ∝ k^(−α): weighted least squares (weights 1/k) of log λ_k on log k
    over ranks fit_start..fit_end (1-based; Stringer et al. 2019), α = −slope.

    alpha_req_r2: R² of that line on log λ over ranks r2_start (default fit_start)..r2_end,
    or ..len−10 when the spectrum has fewer than r2_end+12 eigenvalues (the authors' rule:
    500, or d−10 when d < 512). R² is unweighted, as the authors' sklearn `r2_score`: it
    judges the line on every rank of the longer range alike. Their script starts it at rank
    13 (an in-place `trange += 1`); r2_start=13 reproduces that. Zero eigenvalues are left
    out of both fits (log 0) and counted."""
    fit_start, fit_end = _check_rank("fit_start", fit_start), _check_rank("fit_end", fit_end)
    r2_start = fit_start if r2_start is None else _check_rank("r2_start", r2_start)
    r2_end = _check_rank("r2_end", r2_end)
    if fit_end < fit_start + 2:
        raise InputError(f"the αReQ fit needs at least 3 ranks; got fit_start={fit_start}, fit_end={fit_end}.")
    n = int(lam.size)
    reasons: list[str] = []
    extra: dict[str, Any] = {"r2_start": r2_start}

    hi = min(fit_end, n)
    if hi < fit_start:
        reasons.append(f"spectrum has {n} eigenvalues, fewer than fit_start={fit_start}")
    elif hi < fit_end:
        reasons.append(f"spectrum has {n} eigenvalues: fit range clipped to ranks {fit_start}..{hi}")
    extra["fit_range"] = [fit_start, hi] if hi >= fit_start else None
    k = np.arange(fit_start, hi + 1, dtype=np.float64)  # ranks, 1-based
    y = lam[fit_start - 1 : hi]
    zeros = int(np.count_nonzero(y <= 0))
    extra["n_zero_excluded"] = zeros
    if zeros:
        reasons.append(
            f"{zeros} zero eigenvalue(s) in the fit range left out (log 0): fewer samples than "
            "dimensions, or constant features"
        )
    k, y = k[y > 0], y[y > 0]
    extra["n_fit_points"] = int(k.size)
    if k.size < 3:
        reasons.append(
            f"only {k.size} positive eigenvalue(s) in the fit range: need 3, i.e. at least {fit_start + 2} "
            f"eigenvalues above the numerical floor ({int(np.count_nonzero(lam > 0))} here)"
        )
        extra["reason"] = "; ".join(reasons)
        return {"alpha_req": math.nan, "alpha_req_r2": math.nan}, extra

    x, ly, w = np.log(k), np.log(y / lam[0]), 1.0 / k
    xm, ym = np.dot(w, x) / w.sum(), np.dot(w, ly) / w.sum()
    dx = x - xm
    slope = float(np.dot(w * dx, ly - ym) / np.dot(w * dx, dx))
    intercept = ym - slope * xm

    end = r2_end if n >= r2_end + 12 else n - 10
    extra["r2_range"] = [r2_start, end] if end >= r2_start else None
    kr = np.arange(r2_start, max(end, r2_start - 1) + 1)  # ranks, 1-based
    yr = lam[kr - 1]
    kr, yr = kr[yr > 0], yr[yr > 0]
    extra["n_r2_points"] = int(kr.size)
    if kr.size < 3:
        reasons.append(f"only {kr.size} positive eigenvalue(s) in the R² range (ranks {r2_start}..{end}): need 3")
        r2 = math.nan
    else:
        lr = np.log(yr / lam[0])
        resid = lr - (intercept + slope * np.log(kr))
        ss_res, ss_tot = float(np.dot(resid, resid)), float(np.dot(lr - lr.mean(), lr - lr.mean()))
        tiny = kr.size * (64 * _EPS64 * max(1.0, float(np.abs(lr).max()))) ** 2
        if ss_tot <= tiny:
            # log λ constant over the range (flat spectrum): R² is 0/0. The flat fitted line
            # either matches it (1, as sklearn's r2_score says) or it is undefined.
            r2 = 1.0 if ss_res <= tiny else math.nan
            reasons.append("log λ is constant over the R² range: R² is 1 only if the fitted line is flat too")
        else:
            r2 = 1.0 - ss_res / ss_tot
    if reasons:
        extra["reason"] = "; ".join(reasons)
    return {"alpha_req": -slope, "alpha_req_r2": r2}, extra


@metric
def spectral_entropy(lam: np.ndarray, *, eps: float = 1e-7, max_components: int | None = 2048):
    """Shannon entropy −Σ pᵢ log pᵢ (nats) of the normalised spectrum: log RankMe, same eps and components."""
    kept = _top(lam, max_components)
    extra: dict[str, Any] = {"n_components": int(kept.size)}
    if reason := _degenerate(kept):
        return math.nan, extra | {"reason": reason}
    return _entropy(kept / kept.sum(), eps), extra


@metric
def participation_ratio(lam: np.ndarray):
    """(Σλ)² / Σλ², on the full spectrum."""
    extra: dict[str, Any] = {"n_components": int(lam.size)}
    if reason := _degenerate(lam):
        return math.nan, extra | {"reason": reason}
    r = lam / lam[0]
    return float(r.sum() ** 2 / np.dot(r, r)), extra


@metric
def stable_rank(lam: np.ndarray):
    """Σλ / λ₁, on the full spectrum."""
    extra: dict[str, Any] = {"n_components": int(lam.size)}
    if reason := _degenerate(lam):
        return math.nan, extra | {"reason": reason}
    return float((lam / lam[0]).sum()), extra


@metric
def top_eig_share(lam: np.ndarray):
    """λ₁ / Σλ (anisotropy), on the full spectrum."""
    extra: dict[str, Any] = {"n_components": int(lam.size)}
    if reason := _degenerate(lam):
        return math.nan, extra | {"reason": reason}
    return float(1.0 / (lam / lam[0]).sum()), extra


# --------------------------------------------------------------------------------------
# Computing metrics
# --------------------------------------------------------------------------------------


def _clean_spectrum(eigenvalues: Any) -> np.ndarray:
    if _is_torch(eigenvalues):
        eigenvalues = eigenvalues.detach().to("cpu").double().numpy()
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1:
        raise InputError(f"eigenvalues must be a 1-D vector; got shape {lam.shape}.")
    if not np.isfinite(lam).all():
        raise InputError("eigenvalues contain NaN or infinite values: recompute the spectrum.")
    lam = np.sort(lam)[::-1]
    if lam.size:
        # Same numerical-zero rule as Covariance.eigenvalues, so a spectrum from SVD (whose
        # structural zeros come out at 1e-30) and one from eigh (at 1e-17) read alike.
        floor = float(np.abs(lam).max()) * lam.size * _EPS64
        if lam[-1] < -floor:
            raise InputError(
                f"eigenvalue {lam[-1]:.3g} is negative beyond rounding: not the spectrum of a covariance."
            )
        lam = np.where(lam > floor, lam, 0.0)
    lam.flags.writeable = False
    return lam


def compute_metrics(eigenvalues: Any, names: Iterable[str] | None = None, **overrides: Any) -> list[MetricValue]:
    """The registered metrics (all, or `names`) of a covariance spectrum.

    `eigenvalues` may be in any order and any scale (sorted descending here). `overrides`
    such as max_components=None or fit_start=5 go to each metric that has that parameter.
    Each MetricValue's params hold the parameters used and what was derived from them.

    Example:
        metrics_dict(compute_metrics(cov.eigenvalues(), max_components=None))
    """
    lam = _clean_spectrum(eigenvalues)
    selected = list(REGISTRY) if names is None else list(names)
    for name in selected:
        if name not in REGISTRY:
            raise InputError(f"unknown metric {name!r}; registered metrics: {', '.join(REGISTRY)}.")
    known = {p for m in REGISTRY.values() for p in m.defaults}
    if unknown := sorted(set(overrides) - known):
        raise InputError(f"unknown metric parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    out: list[MetricValue] = []
    for name in selected:
        m = REGISTRY[name]
        params = m.defaults | {k: v for k, v in overrides.items() if k in m.defaults}
        value, extra = m.fn(lam, **params)
        values = value if isinstance(value, dict) else {name: value}
        used = params | extra
        out.extend(MetricValue(metric=o, value=float(values[o]), params=dict(used)) for o in m.outputs)
    return out


def metrics_dict(values: Iterable[MetricValue]) -> dict[str, float]:
    """{metric: value} from compute_metrics' list."""
    return {v.metric: v.value for v in values}


def _eigvalsh(c: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric matrix whose upper triangle `c` holds; `c` is overwritten.

    Eigenvalues only: LAPACK's divide-and-conquer driver then runs dsterf on the tridiagonal
    matrix, so the cost is the reduction to it (4/3 d³ FLOPs), on EIG_THREADS BLAS threads.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(EIG_THREADS, user_api="blas"):
        return eigh(c, lower=False, eigvals_only=True, overwrite_a=True, check_finite=False, driver="evd")


def gram_eigenvalues(x: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """The covariance spectrum of the rows of `x` (n, d), through the (n, n) Gram matrix.

    For n < d the centred F·Fᵀ has the same nonzero eigenvalues as Fᵀ·F, at n²
    instead of d² memory: a 10 x 40,000 matrix needs 3 MB, not 12 GiB. Same output as
    `Covariance.eigenvalues` (length min(n, d), largest first, the same numerical-zero floor).
    """
    n, d = x.shape
    if n < 2:
        raise InputError(f"eigenvalues need at least 2 rows of features; this matrix has {n}.")
    mean = np.zeros(d)
    for i in range(0, n, chunk_rows):
        mean += x[i : i + chunk_rows].sum(axis=0, dtype=np.float64)
    mean /= n
    centred = np.empty((n, d), dtype=np.float64)  # (n, d)
    for i in range(0, n, chunk_rows):
        np.subtract(x[i : i + chunk_rows], mean, out=centred[i : i + chunk_rows])
    # centredᵀ is the Fortran-ordered (d, n) operand; trans=1 gives centred·centredᵀ, (n, n).
    gram = dsyrk(1.0, centred.T, trans=1, lower=0)
    del centred
    if not np.isfinite(gram).all():
        raise InputError("the Gram matrix overflows float64: features are too large (rescale them).")
    lam = _eigvalsh(gram)
    lam = lam[::-1] / n
    lam = np.where(lam > max(lam[0], 0.0) * d * _EPS64, lam, 0.0)
    return np.ascontiguousarray(lam[: min(n, d)])



# --------------------------------------------------------------------------------------
# The isotropic baseline
# --------------------------------------------------------------------------------------


def isotropic_spectrum(n: int, d: int, grid: int = 20_001) -> np.ndarray:
    """The covariance spectrum that n samples of isotropic Gaussian features in d dimensions give:
    what a trajectory looks like when the geometry is random (length d, largest first).

    Computed, not sampled: the centred covariance of n rows has n − 1 degrees of freedom, and
    its min(n − 1, d) nonzero eigenvalues follow the Marchenko–Pastur law of ratio
    r = min/max; the eigenvalue of rank k is the law's quantile at upper-tail probability
    (k − ½)/min, the rest are 0. Scale is irrelevant (every metric is scale-free). At n = 2,000
    and d = 256 its RankMe and αReQ match a sampled Gaussian matrix's within 1 % (tests).
    """
    n, d = _check_rank("n", n), _check_rank("d", d)
    if n < 3:
        raise InputError(f"the isotropic baseline needs at least 3 samples; got n={n}.")
    m = n - 1
    p, q = min(m, d), max(m, d)
    r = p / q
    a, b = (1 - math.sqrt(r)) ** 2, (1 + math.sqrt(r)) ** 2
    # x = (a + b)/2 − (b − a)/2 · cos θ makes the density's square-root edges smooth:
    # f(x) dx = ((b − a)/2)² sin²θ / (2π r x) dθ, integrable by the trapezoid rule.
    theta = np.linspace(0.0, math.pi, grid)
    x = (a + b) / 2 - (b - a) / 2 * np.cos(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = np.where(x > 0, ((b - a) / 2) ** 2 * np.sin(theta) ** 2 / (2 * math.pi * r * x), 0.0)
    if r == 1.0:  # a = 0: the integrand's limit at θ = 0 is finite (sin²θ / (1 − cos θ) → 2)
        dens[0] = ((b - a) / 2) ** 2 * 2 / (2 * math.pi * (b - a) / 2)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(theta))])
    cdf /= cdf[-1]
    ranks = np.arange(1, p + 1)
    lam = np.interp(1.0 - (ranks - 0.5) / p, cdf, x)
    return np.concatenate([lam, np.zeros(d - p)])


def isotropic_baseline(n: int, d: int, names: Iterable[str] = ("rankme", "alpha_req")) -> dict[str, float]:
    """{metric: value} of `isotropic_spectrum(n, d)`, with the default parameters: the
    reference a trajectory is drawn against (`geowh plot --baseline`, the report)."""
    return metrics_dict(compute_metrics(isotropic_spectrum(n, d), list(names)))
