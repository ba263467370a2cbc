"""`geowh metrics` and `geowh recompute`: spectral metrics of a feature matrix the user has, or
of the spectra the warehouse holds, with other parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geowh.cli.common import DEFAULT_DB, Db, Json, app, err_console, print_json, render_frame


@app.command()
def metrics(
    features: Annotated[Path, typer.Argument(help="Feature matrix, rows = samples: .npy, .safetensors or .parquet.")],
    max_components: Annotated[
        int | None, typer.Option(help="Components kept for RankMe, as the authors' PCA (0 = full spectrum; "
                                         "default: the metric's, 2048).")
    ] = None,
    fit_start: Annotated[int | None, typer.Option(help="First rank (1-based) of the αReQ fit (default: the metric's).")] = None,
    fit_end: Annotated[int | None, typer.Option(help="Last rank (1-based) of the αReQ fit (default: the metric's).")] = None,
    json_: Json = False,
) -> None:
    """All registered spectral metrics of a feature matrix you already have, and why any is null.

    Example: geowh metrics features.npy --json
    """
    import math

    from geowh.ingest.features.spectrum import metric_values_of_file

    # An option not given leaves the metric's own default (spectrum_math's registry) in place.
    values = metric_values_of_file(features, **_given(max_components=max_components, fit_start=fit_start,
                                                      fit_end=fit_end))
    # Why a value is null, or what limits it (a clipped fit range): the metric's own `reason`.
    reasons = {v.metric: v.params["reason"] for v in values if "reason" in v.params}
    if json_:
        print_json({"metrics": {v.metric: v.value for v in values}, "reasons": reasons})
        return
    import polars as pl

    render_frame(pl.DataFrame({
        "metric": [v.metric for v in values],
        "value": [None if math.isnan(v.value) else v.value for v in values],
        "note": [reasons.get(v.metric, "") for v in values],
    }))


@app.command()
def recompute(
    model: Annotated[str | None, typer.Option(help="Model name (default: every model with stored spectra).")] = None,
    metric: Annotated[
        list[str] | None, typer.Option(help="Metric to recompute, repeatable (default: each that takes a given parameter).")
    ] = None,
    max_components: Annotated[
        int | None, typer.Option(help="Components kept for RankMe and the entropy (0 = full spectrum).")
    ] = None,
    fit_start: Annotated[int | None, typer.Option(help="First rank (1-based) of the αReQ fit.")] = None,
    fit_end: Annotated[int | None, typer.Option(help="Last rank (1-based) of the αReQ fit.")] = None,
    r2_end: Annotated[int | None, typer.Option(help="Last rank of αReQ's R² range.")] = None,
    db: Db = DEFAULT_DB,
    json_: Json = False,
) -> None:
    """Recompute metrics from the stored spectra with other parameters (no model, no forward pass);
    stored as new rows named after the parameters, `alpha_req@fit_end=200,fit_start=10`.

    With --metric and no parameter, backfills those metrics with their current definition under
    their own name: a metric added since the ingest, or one `geowh info` lists as stale.

    Example: geowh recompute --model pythia-160m --fit-start 10 --fit-end 200

    Example: geowh recompute --metric participation_ratio
    """
    from geowh.queries.recompute import recompute as run

    params = _given(max_components=max_components, fit_start=fit_start, fit_end=fit_end, r2_end=r2_end)
    summary = run(db, model=model, names=metric, **params)
    left = summary.unique("model")["skipped_spectra"].sum() if "skipped_spectra" in summary.columns else 0
    if left:
        err_console().print(
            f"note: {left} spectra measured with --subsets were left as they are "
            "(their values are means over subsets, which are not stored): ingest them again to refresh", highlight=False)
    if json_:
        print_json(summary.to_dicts())
    else:
        render_frame(summary, title="recomputed metrics")


def _given(**options) -> dict:
    """The metric parameters given on the command line (0 components = the full spectrum)."""
    params = {k: v for k, v in options.items() if v is not None}
    if "max_components" in params:
        params["max_components"] = params["max_components"] or None
    return params
