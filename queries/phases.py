"""`geowh phases`: segment a trajectory into warmup, entropy- and compression-seeking phases.

The method (docs/phases.md has the full write-up):

1. The signal. `rankme`: log RankMe. `alpha_req`: −αReQ / median|αReQ|. `both`: their mean.
   All three are in units of relative change and rise when the geometry expands (entropy-seeking).
2. Over log training time (log10(step + 1)), fit the signal with the piecewise-linear function
   with the fewest pieces that BIC prefers (exact dynamic programming, every piece at least
   `min_size` checkpoints). This is the smoothing: noise is absorbed by the lines.
3. Adjacent pieces whose slopes have the same sign are one phase; a boundary sits on the
   extreme checkpoint (peak or trough) of the fit.
4. A phase must change the fitted signal by at least `min_change` (relative) and `noise_k`
   times the residual noise; the smallest phase that does not is merged into its neighbours,
   until all do. A trajectory without any such phase is one `flat` phase.
5. Labels: the first phase is `warmup` when it falls and something follows; otherwise a
   rising phase is `entropy-seeking`, a falling one `compression-seeking` (cycles allowed).
   Post-training stages (checkpoints.stage other than pretrain) are one phase each, labelled
   by the direction from the end of the previous stage to their last checkpoint and compared
   with the paper (SFT/DPO entropy-seeking, RLVR compression-seeking).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from geowh.errors import InputError
from geowh.progress import Event, Progress, silent
from geowh.queries.series import (
    Pick,
    check_axis,
    fit_flags,
    load_series,
    log_axis,
    pick_series,
    require_axis,
)
from geowh.warehouse import Warehouse, canonical_model, utcnow

METHOD = "pwlinear-bic-v2"  # v2: a boundary moves to the fit's extreme when the kink falls before the turn
BASES = ("rankme", "alpha_req", "both")
PRETRAINING = (None, "pretrain")
# The direction the paper reports for each post-training stage (METHOD.md §4).
EXPECTED = {"sft": "entropy-seeking", "dpo": "entropy-seeking", "rlvr": "compression-seeking"}

COLUMNS = {
    "model": pl.String, "probe": pl.String, "layer": pl.Int32, "pooling": pl.String, "basis": pl.String,
    "phase_index": pl.Int32, "phase": pl.String, "stage": pl.String, "matches_paper": pl.Boolean,
    "start_step": pl.Int64, "end_step": pl.Int64, "start_tokens": pl.Float64, "end_tokens": pl.Float64,
    "start_flops": pl.Float64, "end_flops": pl.Float64, "delta_rankme": pl.Float64, "delta_alpha_req": pl.Float64, "evidence": pl.String,
}


@dataclass(frozen=True)
class PhaseParams:
    """Parameters of the segmentation; stored with every result."""

    min_size: int = 3
    """Fewest checkpoints in one linear piece (and so in one phase)."""
    min_change: float = 0.05
    """Smallest relative change of the signal (5 %) that makes a phase."""
    noise_k: float = 3.0
    """A phase must also change the signal by this many residual standard deviations."""
    max_pieces: int = 12
    """Most linear pieces the fit may use."""

    @property
    def min_checkpoints(self) -> int:
        return 2 * self.min_size


@dataclass
class Segmentation:
    """Phases of one signal: `bounds` are checkpoint indices (shared between neighbours)."""

    bounds: list[int]
    change: list[float]
    """Change of the fitted signal over each phase."""
    pieces: list[tuple[int, int]]
    """The linear pieces, half-open index ranges."""
    fit: np.ndarray
    sigma: float
    threshold: float

    @property
    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self.bounds[:-1], self.bounds[1:]))


def segment(t: np.ndarray, y: np.ndarray, params: PhaseParams = PhaseParams()) -> Segmentation:
    """Phases of the signal `y` over the log time `t` (both sorted by t). Deterministic."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    n = len(y)
    if n < params.min_checkpoints:
        raise InputError(f"{n} checkpoints are too few to segment: phases need at least {params.min_checkpoints}")
    pieces, rss, n_params = _best_pieces(t, y, params)
    fit = piecewise_fit(t, y, pieces)
    sigma = float(np.sqrt(rss / (n - n_params))) if n > n_params else 0.0
    threshold = max(params.min_change, params.noise_k * sigma)
    slopes = [_line(t[a:b], fit[a:b])[1] for a, b in pieces]
    runs: list[list[int]] = []  # runs of pieces with the same slope sign: [first piece, last piece]
    for i, slope in enumerate(slopes):
        if runs and np.sign(slope) == np.sign(slopes[runs[-1][0]]) or (runs and slope == 0):
            runs[-1][1] = i
        else:
            runs.append([i, i])
    bounds = [0]
    for left, right in zip(runs[:-1], runs[1:]):
        a = pieces[left[1]][1] - 1  # last checkpoint of the left run
        rising = slopes[left[0]] > 0
        guess = a if (fit[a] >= fit[a + 1]) == rising else a + 1
        # The kink, refined with a continuous two-line fit over the two pieces that meet there.
        # Phases keep at least min_size checkpoints, so boundaries never cross.
        lo = max(pieces[left[1]][0], bounds[-1])
        kink = _hinge(t, y, lo, pieces[right[0]][1], guess, params.min_size)
        # Two lines cannot bend: where the signal rounds over (a concave rise into a slow
        # fall) the kink lands before the turn, and the phase after it would start with a
        # rise as large as a phase. Then the boundary goes to the fit's extreme (a peak or
        # trough of the fit is always at a or a + 1: each piece is a line).
        overshoot = (fit[guess] - fit[kink]) * (1 if rising else -1)
        bounds.append(guess if overshoot > threshold else kink)
    bounds.append(n - 1)
    while True:
        change = [float(fit[e] - fit[s]) for s, e in zip(bounds[:-1], bounds[1:])]
        # The fit may jump between pieces, so a run can end up with the sign of its neighbour: join them.
        same = [k for k in range(len(change) - 1) if np.sign(change[k]) == np.sign(change[k + 1])]
        if same:
            drop = [same[0] + 1]
        elif len(change) > 1 and min(map(abs, change)) < threshold:
            k = int(np.argmin(np.abs(change)))
            drop = [1] if k == 0 else [k] if k == len(change) - 1 else [k, k + 1]
        else:
            return Segmentation(bounds, change, pieces, fit, sigma, threshold)
        bounds = [b for i, b in enumerate(bounds) if i not in drop]


def piecewise_fit(t: np.ndarray, v: np.ndarray, pieces: list[tuple[int, int]]) -> np.ndarray:
    """Least-squares line on every piece, evaluated at its checkpoints (NaN where v is NaN)."""
    out = np.full(len(v), np.nan)
    for a, b in pieces:
        ok = np.isfinite(v[a:b])
        if ok.sum() >= 2:
            intercept, slope = _line(t[a:b][ok], v[a:b][ok])
            out[a:b] = intercept + slope * t[a:b]
        elif ok.any():
            out[a:b] = v[a:b][ok].mean()
    return out


def signal(rankme: np.ndarray, alpha: np.ndarray, basis: str) -> np.ndarray:
    """The series segmented: up = entropy-seeking, in units of relative change."""
    if basis not in BASES:
        raise InputError(f"--metric must be one of {', '.join(BASES)}, not {basis!r}")
    parts = []
    if basis in ("rankme", "both"):
        rankme = np.asarray(rankme, float)
        if (rankme <= 0).any():
            raise InputError("RankMe must be positive to segment it (it is an effective rank ≥ 1)")
        parts.append(np.log(rankme))
    if basis in ("alpha_req", "both"):
        alpha = np.asarray(alpha, float)
        scale = np.median(np.abs(alpha)) or 1.0
        parts.append(-alpha / scale)
    return np.mean(parts, axis=0)


def phases(
    wh: Warehouse,
    model: str,
    probe: str | None = None,
    layer: int | None = None,
    pooling: str | None = None,
    metric: str = "both",
    x: str = "step",
    params: PhaseParams = PhaseParams(),
    store: bool = True,
    progress: Progress = silent,
) -> pl.DataFrame:
    """The phases of a model's RankMe/αReQ trajectory, one row per phase (stored in `phases`).

    `metric` picks the signal the change points are found on (rankme, alpha_req or both);
    `x` the training-time axis (step, tokens or training FLOPs = 6 · parameters · tokens, logarithmic). Without probe/layer, the model's
    probe with the most checkpoints and its last layer are used (`progress` is told, a `note` event, when there was a
    choice). Raises InputError when the trajectory has too few checkpoints.
    """
    check_axis(x)
    if metric not in BASES:
        raise InputError(f"--metric must be one of {', '.join(BASES)}, not {metric!r}")
    model = canonical_model(model)
    if store and wh.path.exists():
        wh.migrate()  # it will write: upgrade an older file as every writer does (readers never do)
    needed = ["rankme", "alpha_req"] if metric == "both" else [metric]
    pick = pick_series(wh, model, needed, probe, layer, pooling, progress)
    require_axis(wh, model, x)
    series = load_series(wh, pick, ["rankme", "alpha_req"])
    series = series.join(fit_flags(wh, pick), on="checkpoint", how="left")
    series = series.filter(pl.all_horizontal(pl.col(m).is_not_null() & pl.col(m).is_not_nan() for m in needed))
    rows = phase_rows(series, pick, metric, x, params)
    if store:
        _store(wh, pick, metric, x, params, rows)
    return rows


def phase_map(
    wh: Warehouse,
    model: str,
    probe: str | None = None,
    pooling: str | None = None,
    layers: str | Sequence[int] = "all",
    metric: str = "both",
    x: str = "step",
    params: PhaseParams = PhaseParams(),
    store: bool = True,
    progress: Progress = silent,
) -> pl.DataFrame:
    """The phases of every ingested layer (`layers="all"`, or a list): `phases` per layer, one
    row per (layer, phase), each layer's rows stored as `phases` stores them. A layer whose
    trajectory cannot be segmented (too few checkpoints) is left out and `progress` is told why (a `note`).
    Answers: does the warmup collapse, or the compression, reach the top layers first?
    """
    check_axis(x)
    needed = ["rankme", "alpha_req"] if metric == "both" else [metric]
    pick = pick_series(wh, model, needed, probe, None, pooling)  # every layer: no "using layer" note
    found = wh.query(
        f"SELECT DISTINCT layer FROM metrics WHERE model = ? AND probe IS NOT DISTINCT FROM ? "
        f"AND pooling IS NOT DISTINCT FROM ? AND layer IS NOT NULL AND metric IN ({', '.join('?' * len(needed))}) "
        "ORDER BY layer",
        [pick.model, pick.probe, pick.pooling, *needed],
    )["layer"].to_list()
    wanted = found if layers == "all" else [int(v) for v in (layers.split(",") if isinstance(layers, str) else layers)]
    if missing := [v for v in wanted if v not in found]:
        raise InputError(f"{pick.model} has no layer {', '.join(map(str, missing))} for probe {pick.probe} "
                         f"(its layers: {', '.join(map(str, found)) or 'none'})")
    frames = []
    for layer in wanted:
        try:
            frames.append(phases(wh, pick.model, pick.probe, layer, pick.pooling, metric, x, params, store))
        except InputError as e:
            progress(Event("note", f"layer {layer} left out: {e}"))
    if not frames:
        raise InputError(f"no layer of {pick.model} could be segmented: ingest more checkpoints")
    return pl.concat(frames)


def phase_rows(series: pl.DataFrame, pick: Pick, basis: str, x: str, params: PhaseParams) -> pl.DataFrame:
    """The phases of one loaded trajectory (see `phases`); pure, nothing is read or written."""
    pre = series.filter(pl.col("stage").is_null() | (pl.col("stage") == "pretrain"))
    post = series.filter(pl.col("stage").is_not_null() & (pl.col("stage") != "pretrain"))
    if pre.height < params.min_checkpoints and post.height == 0:
        raise InputError(
            f"{pick.describe()} has {pre.height} checkpoint(s) with {basis} values: phases need at least "
            f"{params.min_checkpoints}; ingest or import more checkpoints"
        )
    rows = []
    if pre.height >= params.min_checkpoints:
        rows.extend(_pretraining(pre, basis, x, params))
    reference = pre.tail(1) if pre.height else None
    for (stage,), part in post.group_by(["stage"], maintain_order=True):
        rows.append(_stage(part, reference, stage, basis, params))
        reference = part.tail(1)
    frame = pl.DataFrame(
        [{"model": pick.model, "probe": pick.probe, "layer": pick.layer, "pooling": pick.pooling, "basis": basis,
          "phase_index": i, **r} for i, r in enumerate(rows)],
        schema=COLUMNS,
    )
    return frame


def _pretraining(pre: pl.DataFrame, basis: str, x: str, params: PhaseParams) -> list[dict]:
    values = pre[x].to_numpy()
    if pre[x].null_count():
        raise InputError(f"{pre[x].null_count()} checkpoint(s) have no {x} recorded; use --x step")
    t = log_axis(values.astype(float), x)
    rankme, alpha = pre["rankme"].to_numpy().astype(float), pre["alpha_req"].to_numpy().astype(float)
    seg = segment(t, signal(rankme, alpha, basis), params)
    smooth = {m: piecewise_fit(t, v, seg.pieces) for m, v in (("rankme", rankme), ("alpha_req", alpha))}
    rows = []
    for i, ((s, e), change) in enumerate(zip(seg.spans, seg.change)):
        if len(seg.spans) == 1 and abs(change) < seg.threshold:
            label, rule = "flat", f"no phase changes the signal by {seg.threshold:.3g} or more"
        elif i == 0 and change < 0 and len(seg.spans) > 1:
            label, rule = "warmup", "first phase, falling (RankMe down / αReQ up)"
        elif change > 0:
            label, rule = "entropy-seeking", "signal rises (RankMe up / αReQ down)"
        else:
            label, rule = "compression-seeking", "signal falls (RankMe down / αReQ up)"
        d_rankme = float(smooth["rankme"][e] - smooth["rankme"][s])
        d_alpha = float(smooth["alpha_req"][e] - smooth["alpha_req"][s])
        span = t[e] - t[s]
        rows.append(_row(pre, s, e, label, None, None, d_rankme, d_alpha, {
            "rule": rule,
            "checkpoints": e - s + 1,
            "signal_change": round(change, 6),
            "threshold": round(seg.threshold, 6),
            "noise_sd": round(seg.sigma, 6),
            "rankme_relative_change": _relative(d_rankme, smooth["rankme"][s]),
            "alpha_req_relative_change": _relative(d_alpha, smooth["alpha_req"][s]),
            "rankme_slope_per_decade": _round(d_rankme / span) if span > 0 else None,
            "alpha_req_slope_per_decade": _round(d_alpha / span) if span > 0 else None,
            "metrics_agree": _agree(d_rankme, d_alpha),
        }))
    return rows


def _stage(part: pl.DataFrame, reference: pl.DataFrame | None, stage: str, basis: str, params: PhaseParams) -> dict:
    """One post-training stage: its direction from the end of the previous stage to its last checkpoint."""
    span = pl.concat([reference, part], how="vertical_relaxed") if reference is not None else part
    rankme, alpha = span["rankme"].to_numpy().astype(float), span["alpha_req"].to_numpy().astype(float)
    y = signal(rankme, alpha, basis)
    change = float(y[-1] - y[0])
    if span.height < 2 or abs(change) < params.min_change:
        label = "flat"
    else:
        label = "entropy-seeking" if change > 0 else "compression-seeking"
    expected = EXPECTED.get(stage)
    d_rankme, d_alpha = float(rankme[-1] - rankme[0]), float(alpha[-1] - alpha[0])
    return _row(span, 0, span.height - 1, label, stage, None if expected is None else label == expected,
                d_rankme, d_alpha, {
                    "rule": "post-training stage: direction from the previous stage's end to this stage's last checkpoint",
                    "checkpoints": part.height,
                    "from_checkpoint": span["checkpoint"][0],
                    "signal_change": round(change, 6),
                    "threshold": params.min_change,
                    "expected": expected,
                    "rankme_relative_change": _relative(d_rankme, rankme[0]),
                    "alpha_req_relative_change": _relative(d_alpha, alpha[0]),
                    "metrics_agree": _agree(d_rankme, d_alpha),
                })


def _row(frame: pl.DataFrame, s: int, e: int, label: str, stage: str | None, matches: bool | None,
         d_rankme: float, d_alpha: float, evidence: dict) -> dict:
    stages = frame["stage"]
    return {
        "phase": label, "stage": stage if stage is not None else (stages[e] or "pretrain"), "matches_paper": matches,
        "start_step": frame["step"][s], "end_step": frame["step"][e],
        "start_tokens": frame["tokens"][s], "end_tokens": frame["tokens"][e],
        "start_flops": _at(frame, "flops", s), "end_flops": _at(frame, "flops", e),
        "delta_rankme": _round(d_rankme), "delta_alpha_req": _round(d_alpha),
        "evidence": json.dumps({"start_checkpoint": frame["checkpoint"][s], "end_checkpoint": frame["checkpoint"][e],
                                **evidence, **_fit_evidence(frame, s, e)}),
    }


def _fit_evidence(frame: pl.DataFrame, s: int, e: int) -> dict:
    """How many of the phase's αReQ values come from a flagged fit (short or poor: schema.sql migration 7)."""
    if "alpha_req_fit" not in frame.columns:
        return {}
    flags = [f for f in frame["alpha_req_fit"][s : e + 1].to_list() if f not in (None, "ok")]
    found: dict[str, Any] = {"alpha_req_fits_flagged": len(flags)}
    if flags:
        found["alpha_req_fit_flags"] = {f: flags.count(f) for f in sorted(set(flags))}
    return found


def _at(frame: pl.DataFrame, column: str, i: int):
    return frame[column][i] if column in frame.columns else None


def _store(wh: Warehouse, pick: Pick, basis: str, x: str, params: PhaseParams, rows: pl.DataFrame) -> None:
    """Replace this trajectory's phases for this basis (a rerun may find fewer phases)."""
    stored = rows.with_columns(
        pl.lit(METHOD).alias("method"),
        pl.lit(json.dumps({**asdict(params), "x": x})).alias("params"),
        pl.lit(utcnow()).alias("computed_at"),
    )
    wh.write({"phases": stored}, before=[(
        "DELETE FROM phases WHERE model = ? AND probe IS NOT DISTINCT FROM ? AND layer IS NOT DISTINCT FROM ? "
        "AND pooling IS NOT DISTINCT FROM ? AND basis = ?",
        [pick.model, pick.probe, pick.layer, pick.pooling, basis],
    )])


# -- the piecewise-linear fit ---------------------------------------------------------------------


def _best_pieces(t: np.ndarray, y: np.ndarray, params: PhaseParams) -> tuple[list[tuple[int, int]], float, int]:
    """The BIC-best partition into linear pieces (exact DP over all partitions), its RSS and parameter count."""
    n = len(y)
    scale = y.std()
    if scale == 0 or not np.isfinite(scale):
        return [(0, n)], 0.0, 2
    tc, yc = t - t.mean(), (y - y.mean()) / scale
    cost = _piece_costs(tc, yc, params.min_size)
    k_max = max(1, min(params.max_pieces, n // params.min_size))
    best = np.full((k_max + 1, n + 1), np.inf)
    back = np.zeros((k_max + 1, n + 1), dtype=int)
    best[1] = cost[0]
    for k in range(2, k_max + 1):
        total = best[k - 1][:, None] + cost  # (start, end)
        back[k] = np.argmin(total, axis=0)
        best[k] = total[back[k], np.arange(n + 1)]
    floor = 1e-12 * n
    chosen, score = 1, np.inf
    for k in range(1, k_max + 1):
        if not np.isfinite(best[k, n]):
            continue
        n_params = 3 * k - 1  # intercept and slope per piece, and the k - 1 breaks
        bic = n * np.log(max(best[k, n], floor) / n) + n_params * np.log(n)
        if bic < score - 1e-9:
            chosen, score = k, bic
    ends, end = [], n
    for k in range(chosen, 0, -1):
        start = back[k, end] if k > 1 else 0
        ends.append((int(start), int(end)))
        end = start
    return ends[::-1], float(best[chosen, n] * scale**2), 3 * chosen - 1


def _piece_costs(t: np.ndarray, y: np.ndarray, min_size: int) -> np.ndarray:
    """cost[i, j] = residual sum of squares of one line through points i..j-1 (inf if too short)."""
    n = len(y)
    sums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (np.ones(n), t, t * t, y, t * y, y * y)]
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    c, st, stt, sy, sty, syy = (s[j] - s[i] for s in sums)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_t = stt - st * st / c
        cov = sty - st * sy / c
        var_y = syy - sy * sy / c
        rss = np.where(var_t > 1e-12, var_y - cov * cov / var_t, var_y)
    rss = np.maximum(rss, 0.0)
    rss[(j - i) < min_size] = np.inf
    return rss


def _hinge(t: np.ndarray, y: np.ndarray, lo: int, hi: int, guess: int, min_size: int) -> int:
    """The checkpoint in [lo, hi) where a continuous broken line (one kink) fits y best."""
    tw, yw = t[lo:hi], y[lo:hi]
    candidates = range(lo + min_size - 1, hi - min_size + 1)
    if not candidates:
        return min(max(guess, lo + 1), hi - 1)
    best, best_rss = candidates[0], np.inf
    for b in candidates:
        d = tw - t[b]
        design = np.column_stack([np.ones_like(tw), d, np.maximum(d, 0.0)])
        coef, *_ = np.linalg.lstsq(design, yw, rcond=None)
        rss = float(np.sum((design @ coef - yw) ** 2))
        if rss < best_rss - 1e-12 or (abs(rss - best_rss) <= 1e-12 and abs(b - guess) < abs(best - guess)):
            best, best_rss = b, rss
    return best


def _line(t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of the least-squares line (slope 0 when t does not vary)."""
    if len(t) < 2 or np.ptp(t) == 0:
        return float(np.mean(v)), 0.0
    slope, intercept = np.polyfit(t, v, 1)
    return float(intercept), float(slope)


def _relative(delta: float, start: float) -> float | None:
    return _round(delta / abs(start)) if start and np.isfinite(start) else None


def _agree(d_rankme: float, d_alpha: float) -> bool | None:
    if not (np.isfinite(d_rankme) and np.isfinite(d_alpha)):
        return None
    return bool(np.sign(d_rankme) == -np.sign(d_alpha))


def _round(value: float) -> float | None:
    return round(float(value), 6) if value is not None and np.isfinite(value) else None
