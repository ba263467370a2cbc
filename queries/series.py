"""Which trajectory a query means, and its values: shared by phases, correlate and plot.

A model can have metrics on several probes, layers and poolings. Unless the user names one,
the default is the probe with the most checkpoints (ties: the last by name), its last layer
(the paper's representation) and `last` pooling; when there was a choice, a note says what
was picked so that the user can pass --probe / --layer instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import polars as pl

from geowh.errors import InputError
from geowh.progress import Event, Progress, silent
from geowh.warehouse import Warehouse, canonical_model

X_AXES = ("step", "tokens", "flops")
# Training compute per token, forward and backward (Kaplan et al. 2020): FLOPs = 6 · N · D, the
# axis of the paper's iso-FLOP figures, so models of different sizes line up.
FLOPS_PER_PARAM_TOKEN = 6


@dataclass(frozen=True)
class Pick:
    """One trajectory: a model's metrics on one probe, layer and pooling (None where unnamed)."""

    model: str
    probe: str | None
    layer: int | None
    pooling: str | None

    def describe(self) -> str:
        return f"{self.model} probe={self.probe} layer={self.layer} pooling={self.pooling}"


def models_arg(models: str | Sequence[str]) -> list[str]:
    """`pythia-410m,olmo-7b` or a list → canonical names, in order, without repeats."""
    names = models.split(",") if isinstance(models, str) else list(models)
    out = []
    for name in (canonical_model(n) for n in names if n.strip()):
        if name not in out:
            out.append(name)
    if not out:
        raise InputError("no model given: pass --model NAME (several as NAME1,NAME2)")
    return out


def pick_series(
    wh: Warehouse,
    model: str,
    metrics: Sequence[str],
    probe: str | None = None,
    layer: int | None = None,
    pooling: str | None = None,
    progress: Progress = silent,
) -> Pick:
    """The probe/layer/pooling whose `metrics` to use for `model` (see the module docstring)."""
    model = canonical_model(model)
    where = ["model = ?", f"metric IN ({', '.join('?' * len(metrics))})"]
    params: list[str | int] = [model, *metrics]
    for column, value in (("probe", probe), ("layer", layer), ("pooling", pooling)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    found = wh.query(
        f"SELECT probe, layer, pooling, count(DISTINCT checkpoint) AS n FROM metrics WHERE {' AND '.join(where)} "
        "GROUP BY ALL",
        params,
    )
    if found.height == 0:
        raise InputError(_missing(wh, model, metrics, probe, layer, pooling))
    probes = found.group_by("probe").agg(pl.col("n").max()).sort(["n", "probe"], descending=True, nulls_last=True)
    chosen_probe = probes["probe"][0]
    rows = found.filter(pl.col("probe").eq_missing(chosen_probe))
    chosen_layer = int(cast(int, rows["layer"].max())) if rows["layer"].null_count() < rows.height else None
    rows = rows.filter(pl.col("layer").eq_missing(chosen_layer))
    poolings = sorted(rows["pooling"].drop_nulls().to_list())
    chosen_pooling = "last" if "last" in poolings else (poolings[0] if poolings else None)
    picked = Pick(model, chosen_probe, chosen_layer, chosen_pooling)
    choices = []
    if probe is None and probes.height > 1:
        choices.append(f"probe {chosen_probe} (most checkpoints of {probes.height}: pass --probe)")
    if layer is None and found.filter(pl.col("probe").eq_missing(chosen_probe))["layer"].n_unique() > 1:
        choices.append(f"layer {chosen_layer} (the last; pass --layer)")
    if pooling is None and len(poolings) > 1:
        choices.append(f"pooling {chosen_pooling} (of {', '.join(poolings)})")
    if choices:
        progress(Event("note", f"{model}: using " + ", ".join(choices)))
    return picked


def load_series(wh: Warehouse, pick: Pick, metrics: Sequence[str]) -> pl.DataFrame:
    """The trajectory, one row per checkpoint in training order: checkpoint, stage, stage_order,
    step, tokens, flops (6 · parameters · tokens, null where either is unknown) and one column per metric."""
    pivots = ", ".join(f"max(m.value) FILTER (WHERE m.metric = ?) AS {_ident(name)}" for name in metrics)
    return wh.query(
        f"""
        SELECT m.checkpoint, c.stage, c.stage_order, c.step, c.tokens,
               {FLOPS_PER_PARAM_TOKEN}.0 * any_value(mo.parameters) * c.tokens AS flops, {pivots}
        FROM metrics m JOIN checkpoints c ON c.model = m.model AND c.checkpoint = m.checkpoint
        LEFT JOIN models mo ON mo.model = m.model
        WHERE m.model = ? AND m.probe IS NOT DISTINCT FROM ? AND m.layer IS NOT DISTINCT FROM ?
          AND m.pooling IS NOT DISTINCT FROM ? AND m.metric IN ({', '.join('?' * len(metrics))})
        GROUP BY m.checkpoint, c.stage, c.stage_order, c.step, c.tokens
        ORDER BY coalesce(c.stage_order, 0), c.step, m.checkpoint
        """,
        [*metrics, pick.model, pick.probe, pick.layer, pick.pooling, *metrics],
    )


def fit_flags(wh: Warehouse, pick: Pick) -> pl.DataFrame:
    """checkpoint, alpha_req_fit: the flag of each αReQ fit of the trajectory (view alpha_req_fits)."""
    return wh.query(
        "SELECT checkpoint, flag AS alpha_req_fit FROM alpha_req_fits WHERE model = ? AND metric = 'alpha_req' "
        "AND probe IS NOT DISTINCT FROM ? AND layer IS NOT DISTINCT FROM ? AND pooling IS NOT DISTINCT FROM ?",
        [pick.model, pick.probe, pick.layer, pick.pooling],
    )


def baseline_of(wh: Warehouse, pick: Pick, metrics: Sequence[str]) -> dict | None:
    """The metrics of isotropic random features of the trajectory's n and d (its most common
    spectrum shape): {"n", "d", metric: value}; None when no spectrum is stored (an import)."""
    from geowh.spectrum_math import REGISTRY, isotropic_baseline

    shape = wh.query(
        "SELECT n_samples, d, count(*) AS k FROM spectra WHERE model = ? AND probe IS NOT DISTINCT FROM ? "
        "AND layer IS NOT DISTINCT FROM ? AND pooling IS NOT DISTINCT FROM ? GROUP BY ALL ORDER BY k DESC, d DESC LIMIT 1",
        [pick.model, pick.probe, pick.layer, pick.pooling],
    )
    if shape.height == 0:
        return None
    n, d = int(shape["n_samples"][0]), int(shape["d"][0])
    names = [m for m in REGISTRY if any(m == x or any(o == x for o in REGISTRY[m].outputs) for x in metrics)]
    return {"n": n, "d": d, **isotropic_baseline(n, d, names)}


def log_axis(values: np.ndarray, axis: str) -> np.ndarray:
    """The log training-time axis: log10(step + 1); for tokens, log10(tokens + tokens of the
    first checkpoint after 0), so that step 0 / 0 tokens sit one grid unit left of the first."""
    values = np.asarray(values, dtype=float)
    if axis == "step":
        return np.log10(values + 1.0)
    positive = values[values > 0]
    offset = positive.min() if positive.size else 1.0
    return np.log10(values + offset)


def check_axis(x: str) -> None:
    if x not in X_AXES:
        raise InputError(f"--x must be step, tokens or flops, not {x!r}")


def require_axis(wh: Warehouse, model: str, x: str, option: str = "--x") -> None:
    """Refuse `--x flops` for a model whose parameter count or tokens are unknown, naming it."""
    check_axis(x)
    if x != "flops":
        return
    known = wh.query("SELECT parameters FROM models WHERE model = ?", [model])
    if known.height == 0 or known["parameters"][0] is None:
        raise InputError(
            f"{option} flops needs the parameter count of {model} (FLOPs = 6 · parameters · tokens) and models.parameters "
            f"is unknown for it (an import names none; an ingest records it): use {option} step or tokens"
        )
    missing = wh.query(
        "SELECT count(*) AS n FROM checkpoints WHERE model = ? AND tokens IS NULL AND checkpoint IN "
        "(SELECT checkpoint FROM metrics WHERE model = ?)",
        [model, model],
    )["n"][0]
    if missing:
        raise InputError(
            f"{option} flops needs the tokens seen at each checkpoint of {model} (FLOPs = 6 · parameters · tokens) and "
            f"{missing} of its checkpoints have none recorded (checkpoints.tokens): use {option} step"
        )


def _missing(wh: Warehouse, model, metrics, probe, layer, pooling) -> str:
    models = wh.query("SELECT DISTINCT model FROM metrics ORDER BY model")["model"].to_list()
    wanted = " / ".join(metrics)
    if model not in models:
        known = ", ".join(models[:12]) + (" …" if len(models) > 12 else "") if models else "none"
        return f"no metrics for model {model!r} in {wh.path} (models with metrics: {known}); ingest or import-metrics it first"
    have = wh.query(
        "SELECT DISTINCT metric FROM metrics WHERE model = ? ORDER BY metric", [model]
    )["metric"].to_list()
    given = ", ".join(f"{k}={v}" for k, v in (("probe", probe), ("layer", layer), ("pooling", pooling)) if v is not None)
    return (
        f"{model} has no {wanted}{' for ' + given if given else ''} (its metrics: {', '.join(have)}); "
        "check --probe/--layer or the metric name"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
