"""Metrics recomputed from stored spectra with other parameters: no model, no forward pass.

Every geometry row keeps its full spectrum (`spectra.eigenvalues`), so another αReQ fit
range or another RankMe cut-off is arithmetic on what is stored. The new values are stored
beside the default ones, never over them: each under the metric's name followed by the
parameters that differ, `alpha_req@fit_end=200,fit_start=10`, so `metrics` keeps its key and
`trajectories` gains a column per variant while its `rankme` and `alpha_req` stay the defaults.

With no parameter, `names` are backfilled: computed with their current definition (defaults)
and stored under their own name, as an ingest would have stored them — a metric added to the
registry after the ingest, or one whose definition changed since (`geowh info` lists those).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from geowh.errors import InputError
from geowh.spectrum_math import REGISTRY, compute_metrics, definitions, definitions_fingerprint
from geowh.warehouse import Warehouse, as_warehouse, canonical_model, utcnow
from geowh.warehouse.runs import config_key, run_row

KIND = "recompute"


def variant_name(metric: str, params: Mapping[str, Any]) -> str:
    """The stored name of `metric` computed with `params`: `rankme@max_components=all`."""
    shown = ",".join(f"{k}={'all' if v is None else v}" for k, v in sorted(params.items()))
    return f"{metric}@{shown}"


def recompute(
    wh: str | Path | Warehouse,
    *,
    model: str | None = None,
    names: Iterable[str] | None = None,
    **params: Any,
) -> pl.DataFrame:
    """Recompute the registered metrics (all, or `names`) that take one of `params` from every
    stored spectrum (of `model`, or of all models), with those parameters; one run row of kind
    'recompute' per model. Returns (model, metric, rows) for what was written.

    Metrics that take none of `params` would repeat their stored values and are left out.

    Example:
        recompute(Warehouse("w.duckdb"), model="pythia-160m", fit_start=10, fit_end=200)
    """
    wh = as_warehouse(wh)
    if not params and names is None:
        raise InputError(
            "nothing to recompute: give a parameter to change (e.g. fit_start=10), or the metrics to backfill "
            "with their current definition (--metric NAME)."
        )
    known = {p for m in REGISTRY.values() for p in m.defaults}
    if unknown := sorted(set(params) - known):
        raise InputError(f"unknown metric parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    wanted = list(REGISTRY) if names is None else list(names)
    if missing := [n for n in wanted if n not in REGISTRY]:
        raise InputError(f"unknown metric(s) {', '.join(missing)}; registered metrics: {', '.join(REGISTRY)}.")
    selected = [n for n in wanted if set(REGISTRY[n].defaults) & set(params)] if params else wanted
    if not selected:
        raise InputError(
            f"none of {', '.join(wanted)} takes {', '.join(sorted(params))}: recomputing would repeat the stored values."
        )

    where, args = ("WHERE model = ?", [canonical_model(model)]) if model else ("", [])
    where = where.replace("model", "s.model")
    spectra = wh.query(
        "SELECT s.model, s.checkpoint, s.probe, s.layer, s.pooling, s.eigenvalues, "
        "coalesce(try_cast(json_extract_string(r.config, '$.subsets') AS INTEGER), 0) AS subsets "
        f"FROM spectra s LEFT JOIN runs r USING (run_id) {where} "
        "ORDER BY s.model, s.checkpoint, s.probe, s.layer, s.pooling",
        args,
    ) if wh.path.exists() else pl.DataFrame()
    skipped = pl.DataFrame()
    if not params and not spectra.is_empty():
        # A backfill stores the default name, whose value is the mean over the probe's subsets when
        # the ingest took --subsets: the subset spectra are not stored, so those are left as they are.
        skipped = spectra.filter(pl.col("subsets") > 0).group_by("model").agg(pl.len().alias("skipped_spectra"))
        spectra = spectra.filter(pl.col("subsets") == 0)
        if spectra.is_empty():
            raise InputError(
                "every stored spectrum was measured with --subsets, whose values are means over subsets "
                "that are not stored: ingest again (after a definition changed the same command measures them again; "
                "otherwise add --force)."
            )
    if spectra.is_empty():
        raise InputError(
            f"no stored spectra{f' of model {model!r}' if model else ''} in {wh.path}: ingest the model first "
            "(`geowh ingest`), or check --model and --db."
        )

    _refuse_clipped(spectra, params)

    config = {"metrics": selected, "params": params, "definitions": definitions(selected)}
    key = config_key(config)
    started_at = utcnow()
    runs: dict[str, dict[str, Any]] = {}
    metrics: list[dict[str, Any]] = []
    for row in spectra.iter_rows(named=True):
        run = runs.get(row["model"])
        if run is None:
            run = runs[row["model"]] = run_row(
                str(uuid.uuid4()), KIND, row["model"], "ok", packages=("numpy_version", "scipy_version"),
                checkpoint=None, probe=None, config_key=key, config=config, device="cpu", dtype="float64",
                definitions=definitions_fingerprint(selected), started_at=started_at,
            )
        where_row = {k: row[k] for k in ("model", "checkpoint", "probe", "layer", "pooling")}
        for v in compute_metrics(row["eigenvalues"], names=selected, **params):  # params empty: the defaults
            metric = next(m for m in selected if v.metric in REGISTRY[m].outputs)
            changed = {k: params[k] for k in REGISTRY[metric].defaults if k in params}
            metrics.append(where_row | {
                "metric": variant_name(v.metric, changed) if changed else v.metric, "value": v.value, "stderr": None,
                "params": v.params | {"recomputed_from": "spectra"}, "run_id": run["run_id"],
            })
    finished = utcnow()
    for run in runs.values():
        run["finished_at"] = finished
    wh.write({"runs": list(runs.values()), "metrics": metrics})
    done = pl.DataFrame(metrics).group_by("model", "metric", maintain_order=True).agg(pl.len().alias("rows"))
    if not params:
        done = done.join(skipped, on="model", how="left").with_columns(pl.col("skipped_spectra").fill_null(0))
    return done


# Parameters that count eigenvalues: past a spectrum's length they are clipped to it.
RANK_PARAMS = ("fit_start", "fit_end", "r2_start", "r2_end", "max_components")


def _refuse_clipped(spectra: pl.DataFrame, params: Mapping[str, Any]) -> None:
    """Refuse a rank parameter longer than a spectrum it would be computed from.

    The metric would quietly use the spectrum's length instead, while the variant is named after
    the value given (`alpha_req@fit_end=99999999999`): a name that says what was not computed.
    """
    ranked = {k: v for k, v in params.items() if k in RANK_PARAMS and v is not None}
    if not ranked:
        return
    lengths = spectra.with_columns(pl.col("eigenvalues").list.len().alias("n"))
    shortest = lengths.sort("n").row(0, named=True)
    for name, value in ranked.items():
        if isinstance(value, int) and value > shortest["n"]:
            where = f"{shortest['model']} {shortest['checkpoint']} (probe {shortest['probe']}, layer {shortest['layer']})"
            fix = "0 (the full spectrum)" if name == "max_components" else f"≤ {shortest['n']}"
            raise InputError(
                f"{name}={value} is past the end of the spectra it would be computed from: {where} has "
                f"{shortest['n']} eigenvalues, so the result would be clipped to that but stored under {name}={value}. "
                f"Give {name} {fix}, or recompute a --model whose spectra are longer"
            )

