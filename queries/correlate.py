"""`geowh correlate`: how a geometry series tracks another across a model's checkpoints (paper Table 9).

A series is a metric name (`alpha_req`, `rankme`, `memorization_spearman`, …) read from
`metrics` on one probe/layer/pooling (picked as for phases), or `eval:TASK/METRIC` read from
`evals` (`eval:sciq/acc`; the few-shot count defaults to 0, or the only one the task has).
Pairs are formed per checkpoint: `exact` joins on the stage and step; `nearest` pairs every
point of the sparser series with the point of the other series nearest on log10(step + 1),
within `tolerance` decades, so series measured on different step grids can be compared.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import polars as pl
from scipy import stats

from geowh.errors import InputError
from geowh.progress import Event, Progress, silent
from geowh.queries.series import (
    FLOPS_PER_PARAM_TOKEN,
    check_axis,
    load_series,
    models_arg,
    pick_series,
    require_axis,
)
from geowh.warehouse import Warehouse

METHODS = ("spearman", "pearson", "kendall")
JOINS = ("exact", "nearest")


@dataclass(frozen=True)
class Series:
    """A parsed series argument: a metric name, or an eval task/metric."""

    text: str
    metric: str | None = None
    task: str | None = None
    eval_metric: str | None = None

    @classmethod
    def parse(cls, text: str) -> Series:
        text = text.strip()
        if text.startswith("eval:"):
            task, _, metric = text[len("eval:"):].partition("/")
            if not task or not metric:
                raise InputError(f"an eval series is eval:TASK/METRIC (e.g. eval:sciq/acc), not {text!r}")
            return cls(text, task=task, eval_metric=metric)
        if not text:
            raise InputError("an empty series: pass a metric name (alpha_req) or eval:TASK/METRIC")
        return cls(text, metric=text)


def series_values(
    wh: Warehouse, model: str, series: Series, probe: str | None = None, layer: int | None = None,
    pooling: str | None = None, fewshot: int | None = None, progress: Progress = silent,
) -> pl.DataFrame:
    """One series of one model: stage, step, tokens, flops, value (NaN/null dropped), in training order."""
    if series.metric is not None:
        pick = pick_series(wh, model, [series.metric], probe, layer, pooling, progress)
        frame = load_series(wh, pick, [series.metric]).rename({series.metric: "value"})
    else:
        frame = _eval_values(wh, model, series, fewshot, progress)
    return frame.select(
        pl.col("stage").fill_null("pretrain"), "step", pl.col("tokens").cast(pl.Float64), pl.col("flops").cast(pl.Float64),
        pl.col("value").cast(pl.Float64),
    ).filter(pl.col("value").is_not_null() & pl.col("value").is_not_nan() & pl.col("step").is_not_null())


def pair(x: pl.DataFrame, y: pl.DataFrame, join: str = "exact", tolerance: float = 0.1,
         axis: str = "step") -> pl.DataFrame:
    """Paired values (stage, step_x, step_y, x, y) of two series of one model. `nearest` pairs on
    the log of `axis` (step + 1; tokens or FLOPs + their first positive value)."""
    if join not in JOINS:
        raise InputError(f"--join must be exact or nearest, not {join!r}")
    check_axis(axis)
    x = x.rename({"value": "x"}).unique(["stage", "step"], keep="first", maintain_order=True)
    y = y.rename({"value": "y"}).unique(["stage", "step"], keep="first", maintain_order=True)
    if join == "exact":
        return x.join(y, on=["stage", "step"], how="inner").select(
            "stage", pl.col("step").alias("step_x"), pl.col("step").alias("step_y"), "x", "y"
        ).sort("stage", "step_x")
    # nearest on log step: the sparser series leads, so no point is used for two partners.
    swap = y.height < x.height
    lead, other = (y, x) if swap else (x, y)
    if axis == "step":
        shift = 1.0
    else:
        positive = pl.concat([lead[axis], other[axis]]).filter(pl.concat([lead[axis], other[axis]]) > 0)
        shift = float(cast(float, positive.min())) if positive.len() else 1.0
        lead, other = lead.drop_nulls(axis), other.drop_nulls(axis)
    lead = lead.with_columns(pl.col("step").alias("step_lead"), (pl.col(axis) + shift).log10().alias("t")).sort("t")
    other = other.with_columns(pl.col("step").alias("step_other"), (pl.col(axis) + shift).log10().alias("t")).sort("t")
    joined = lead.drop("step").join_asof(
        other.drop("step"), on="t", by="stage", strategy="nearest", tolerance=tolerance, check_sortedness=False
    ).drop_nulls(["x", "y"]).unique("step_other", keep="first", maintain_order=True)
    step_x, step_y = ("step_other", "step_lead") if swap else ("step_lead", "step_other")
    return joined.select("stage", pl.col(step_x).alias("step_x"), pl.col(step_y).alias("step_y"), "x", "y").sort(
        "stage", "step_x"
    )


def correlation(x: np.ndarray, y: np.ndarray, method: str = "spearman") -> tuple[float, float]:
    """(rho, p-value) by scipy; NaN for fewer than 3 pairs or a constant series."""
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    test = {"spearman": stats.spearmanr, "pearson": stats.pearsonr, "kendall": stats.kendalltau}[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = test(x, y)
    return float(result.statistic), float(result.pvalue)


def correlate(
    wh: Warehouse,
    models: str | Sequence[str],
    x: str,
    y: str,
    method: str = "spearman",
    join: str = "exact",
    probe: str | None = None,
    layer: int | None = None,
    pooling: str | None = None,
    fewshot: int | None = None,
    tolerance: float = 0.1,
    progress: Progress = silent,
    axis: str = "step",
) -> pl.DataFrame:
    """Correlation of series `x` and `y` across each model's checkpoints, one row per model:
    model, x, y, method, rho, p_value, n (pairs), join.

    `axis` (step, tokens or flops = 6 · parameters · tokens) is the log training-time axis on
    which `join="nearest"` pairs checkpoints within `tolerance` decades.

    >>> correlate(wh, "pythia-410m,pythia-1b", "alpha_req", "eval:sciq/acc")
    """
    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    sx, sy = Series.parse(x), Series.parse(y)
    check_axis(axis)
    rows = []
    for model in models_arg(models):
        if join == "nearest":
            require_axis(wh, model, axis, option="--axis")
        vx = series_values(wh, model, sx, probe, layer, pooling, fewshot, progress)
        vy = series_values(wh, model, sy, probe, layer, pooling, fewshot, progress)
        pairs = pair(vx, vy, join, tolerance, axis)
        if pairs.height < 3:
            progress(Event("note", f"{model}: only {pairs.height} checkpoint(s) have both {x} and {y}"
                           + ("; try --join nearest" if join == "exact" else "")))
        rho, p = correlation(pairs["x"].to_numpy(), pairs["y"].to_numpy(), method)
        rows.append({"model": model, "x": x, "y": y, "method": method, "rho": rho, "p_value": p,
                     "n": pairs.height, "join": join})
    return pl.DataFrame(rows, schema={"model": pl.String, "x": pl.String, "y": pl.String, "method": pl.String,
                                      "rho": pl.Float64, "p_value": pl.Float64, "n": pl.Int64, "join": pl.String})


def _eval_values(wh: Warehouse, model: str, series: Series, fewshot: int | None, progress: Progress) -> pl.DataFrame:
    found = wh.query(
        "SELECT num_fewshot, filter, count(*) AS n FROM evals WHERE model = ? AND task = ? AND metric = ? GROUP BY ALL "
        "ORDER BY num_fewshot, filter",
        [model, series.task, series.eval_metric],
    )
    if fewshot is not None:
        found = found.filter(pl.col("num_fewshot") == fewshot)
    if found.height == 0:
        tasks = wh.query("SELECT DISTINCT task || '/' || metric AS s FROM evals WHERE model = ? ORDER BY s", [model])["s"]
        hint = f" (it has {tasks.len()} eval series, e.g. {', '.join(tasks.head(5))})" if tasks.len() else " (no evals: run geowh import-evals)"
        with_shots = f" with {fewshot}-shot" if fewshot is not None else ""
        raise InputError(f"{model} has no eval {series.task}/{series.eval_metric}{with_shots}{hint}")
    shots = 0 if 0 in found["num_fewshot"].to_list() else found["num_fewshot"][0]
    filters = found.filter(pl.col("num_fewshot") == shots)["filter"].to_list()
    filter_ = "none" if "none" in filters else filters[0]
    if found["num_fewshot"].n_unique() > 1 and fewshot is None or len(filters) > 1:
        progress(Event("note", f"{model}: {series.text} taken {shots}-shot, filter {filter_}"))
    return wh.query(
        f"""
        SELECT coalesce(c.stage, 'pretrain') AS stage, coalesce(c.step, e.step) AS step, c.tokens,
               {FLOPS_PER_PARAM_TOKEN}.0 * mo.parameters * c.tokens AS flops, e.value
        FROM evals e LEFT JOIN checkpoints c ON c.model = e.model AND c.checkpoint = e.checkpoint
        LEFT JOIN models mo ON mo.model = e.model
        WHERE e.model = ? AND e.task = ? AND e.metric = ? AND e.num_fewshot = ? AND e.filter = ?
        ORDER BY step
        """,
        [model, series.task, series.eval_metric, shots, filter_],
    )
