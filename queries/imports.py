"""`geowh import-metrics`: trajectories computed elsewhere (CSV or Parquet, long or wide).

Shared with the eval importer: the `runs` row of kind `import` that records where imported rows
came from, and the content hash that makes a second import of the same file a no-op.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from geowh.errors import InputError
from geowh.warehouse import Warehouse, canonical_model, utcnow
from geowh.warehouse.names import STAGE_ORDER
from geowh.warehouse.runs import run_row
from geowh.warehouse.store import TRAJECTORY_KEYS

# Columns of a metrics file that describe the row rather than hold a metric.
KEY_COLUMNS = ("model", "checkpoint", "step", "tokens", "stage", "probe", "layer", "pooling")
LONG_COLUMNS = ("metric", "value", "stderr")

ROW = "_row"  # the file's row a long row came from

# Poolings a metric row may name: ingest's (`last`, `mean`: ingest/extract.py POOLINGS) and the
# toy model's `none` (one vector per sample). Another name would be a series no query finds.
POOLINGS = ("last", "mean", "none")
# Metric names that would collide with a column of the rows or of `trajectories` (case-blind,
# as SQL identifiers are): importing `step` as a metric would shadow the step axis.
RESERVED_METRICS = frozenset({*TRAJECTORY_KEYS, *KEY_COLUMNS, *LONG_COLUMNS, "run_id", "params", "index_dir"})

_RUN_NAMESPACE = uuid.UUID("6f1c8f5e-3d0a-4c39-9a57-5b1f0e6a2c11")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_key(digest: str, *parts: Any) -> str:
    """The runs.config_key of an import: same file content and same target → same key."""
    return hashlib.sha256("|".join([digest, *map(str, parts)]).encode()).hexdigest()[:16]


def import_run(key: str, model: str, checkpoint: str | None, config: dict[str, Any]) -> dict[str, Any]:
    """A finished `runs` row of kind `import`; its id follows from the key, so a re-import reuses it."""
    now = utcnow()
    return run_row(str(uuid.uuid5(_RUN_NAMESPACE, key)), "import", model, "ok", packages=(), checkpoint=checkpoint,
                   config_key=key, config=config, started_at=now, finished_at=now)


def imported_keys(wh: Warehouse) -> set[str]:
    """config_keys of the imports the warehouse already holds (asked before an import writes, so an
    older file is upgraded here, as any write would)."""
    if not wh.path.exists():
        return set()
    wh.migrate()
    rows = wh.query("SELECT config_key FROM runs WHERE kind = 'import' AND status = 'ok'")
    return set(rows["config_key"].to_list())


def new_models(wh: Warehouse, models: set[str]) -> list[dict[str, Any]]:
    """`models` rows for the names the warehouse does not know yet (known rows are left as they are)."""
    known = set()
    if wh.path.exists():
        known = set(wh.query("SELECT model FROM models")["model"].to_list())
    return [{"model": m, "family": "pythia" if m.startswith("pythia-") else "imported"} for m in sorted(models - known)]


def read_table(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    raise InputError(f"{path}: metrics files must be .csv, .tsv or .parquet, not {suffix or 'no extension'}")


def long_metrics(frame: pl.DataFrame, path: Path, model: str | None = None) -> pl.DataFrame:
    """The file's rows in the long layout: model, checkpoint, step, …, metric, value, stderr, and
    `_row`, the row of the file each came from (0-based, for messages)."""
    frame = frame.rename({c: c.strip().lower() for c in frame.columns}).with_row_index(ROW)
    if model is not None:
        frame = frame.with_columns(pl.lit(model).alias("model"))
    if "model" not in frame.columns:
        raise InputError(f"{path} has no `model` column: add one or pass --model NAME")
    if "step" not in frame.columns and "checkpoint" not in frame.columns:
        raise InputError(f"{path} has neither a `step` nor a `checkpoint` column: one of them must say which checkpoint a row is")
    if {"metric", "value"} <= set(frame.columns):
        long = frame
    else:
        metrics = [
            c for c in frame.columns
            if c not in KEY_COLUMNS and c != ROW and not c.endswith("_stderr") and frame[c].dtype.is_numeric()
        ]
        if not metrics:
            raise InputError(
                f"{path} is neither long (columns model, step, metric, value) nor wide "
                "(model, step and one numeric column per metric)"
            )
        keys = [ROW, *(c for c in KEY_COLUMNS if c in frame.columns)]
        parts = []
        for name in metrics:
            stderr = pl.col(f"{name}_stderr") if f"{name}_stderr" in frame.columns else pl.lit(None)
            parts.append(frame.select(
                *keys, pl.lit(name).alias("metric"),
                pl.col(name).cast(pl.Float64).alias("value"), stderr.cast(pl.Float64).alias("stderr"),
            ))
        long = pl.concat(parts)
    for column, dtype in (("checkpoint", pl.String), ("step", pl.Int64), ("tokens", pl.Float64), ("stage", pl.String),
                          ("probe", pl.String), ("layer", pl.Int32), ("pooling", pl.String), ("stderr", pl.Float64)):
        if column not in long.columns:
            long = long.with_columns(pl.lit(None, dtype).alias(column))
    # Whole numbers only: polars would cast a step or layer of 1.5 to 1, a silent wrong row.
    for column in ("step", "layer"):
        if long[column].dtype.is_float():
            _refuse_rows(long, pl.col(column) != pl.col(column).floor(), path,
                         f"a {column} that is not a whole number ({'optimizer updates' if column == 'step' else 'a layer index'})")
    try:
        names = long["model"].cast(pl.String).unique().drop_nulls().to_list()
        long = long.with_columns(
            pl.col("model").cast(pl.String).replace({n: canonical_model(n) for n in names}),
            pl.col("metric").cast(pl.String).str.strip_chars(),
            pl.col("value").cast(pl.Float64),
            pl.col("stderr").cast(pl.Float64),
            pl.col("step").cast(pl.Int64),
            pl.col("tokens").cast(pl.Float64),
            pl.col("layer").cast(pl.Int32),
            pl.col("stage").cast(pl.String).str.strip_chars().str.to_lowercase(),
            pl.col("checkpoint").cast(pl.String),
            pl.col("probe").cast(pl.String),
            pl.col("pooling").cast(pl.String),
        )
    except pl.exceptions.PolarsError as e:
        raise InputError(f"{path}: a column has values of the wrong type ({str(e).splitlines()[0]})") from None
    # `step{N}`; post-training stages restart their step count, so they get `{stage}-step{N}`.
    long = long.with_columns(
        pl.coalesce(
            "checkpoint",
            pl.when(pl.col("stage").is_null() | (pl.col("stage") == "pretrain"))
            .then(pl.format("step{}", "step"))
            .otherwise(pl.format("{}-step{}", "stage", "step")),
        ).alias("checkpoint")
    )
    _refuse_rows(long, pl.col("step") < 0, path, "a negative step: steps count up from 0")
    _refuse_rows(long, pl.col("layer") < 0, path, "a negative layer: layers count up from 0 (the embeddings)")
    _refuse_rows(long, pl.col("stderr") < 0, path, "a negative stderr: a standard error is ≥ 0")
    _refuse_rows(long, ~pl.col("pooling").is_in(POOLINGS), path,
                 f"an unknown pooling: use {', '.join(POOLINGS)}, or leave the cell empty")
    _refuse_rows(long, pl.col("metric").str.to_lowercase().is_in(sorted(RESERVED_METRICS)) | (pl.col("metric") == ""),
                 path, f"a metric name that is empty or a column's ({', '.join(sorted(RESERVED_METRICS))}): rename the metric")
    _refuse_rows(long, ~pl.col("value").is_finite() | ~pl.col("stderr").is_finite(), path,
                 "a NaN or infinite value: leave the cell empty for a missing value, or drop the row")
    if long["checkpoint"].null_count() or long["model"].null_count() or long["metric"].null_count():
        raise InputError(f"{path}: every row needs a model, a metric and a step or checkpoint; some are empty")
    unknown = set(long["stage"].drop_nulls().unique().to_list()) - set(STAGE_ORDER)
    if unknown:
        raise InputError(f"{path}: unknown stage(s) {sorted(unknown)}; use one of {', '.join(STAGE_ORDER)}")
    keys = ["model", "checkpoint", "probe", "layer", "pooling", "metric"]
    dupes = long.group_by(keys).len().filter(pl.col("len") > 1)
    if dupes.height:
        first = dupes.row(0, named=True)
        raise InputError(f"{path} holds {dupes.height} repeated rows, e.g. {first}: each metric once per checkpoint, probe, layer and pooling")
    return long


def _lines(path: Path, rows: pl.Series) -> str:
    """Where rows (0-based) are in the file: CSV lines (the header is line 1) or Parquet rows."""
    first = sorted(set(rows.to_list()))
    shown = ", ".join(str(r + 2 if path.suffix.lower() in (".csv", ".tsv") else r + 1) for r in first[:5])
    more = f" and {len(first) - 5} more" if len(first) > 5 else ""
    return f"{'line' if path.suffix.lower() in ('.csv', '.tsv') else 'row'}{'s' if len(first) > 1 else ''} {shown}{more}"


def _refuse_rows(long: pl.DataFrame, bad: pl.Expr, path: Path, what: str) -> None:
    found = long.filter(bad.fill_null(False))
    if found.height:
        raise InputError(f"{path}, {_lines(path, found[ROW])}: {what}")


def measured_rows(wh: Warehouse, rows: pl.DataFrame) -> pl.DataFrame:
    """The rows of `rows` whose metrics key holds a value that geowh measured (not imported)."""
    keys = ["model", "checkpoint", "probe", "layer", "pooling", "metric"]
    measured = wh.query(
        "SELECT m.model, m.checkpoint, m.probe, m.layer, m.pooling, m.metric FROM metrics m "
        "LEFT JOIN runs r USING (run_id) WHERE r.kind IS DISTINCT FROM 'import' AND list_contains(?, m.model)",
        [sorted(rows["model"].unique().to_list())],
    )
    if measured.height == 0:
        return rows.clear()
    return rows.join(measured.cast(dict(rows.select(keys).schema)), on=keys, how="semi", nulls_equal=True)


def _unmeasured(wh: Warehouse, checkpoints: list[dict[str, Any]], long: pl.DataFrame, path: Path) -> list[dict[str, Any]]:
    """The `checkpoints` rows an import may write: none of a checkpoint an ingest measured.

    A measured checkpoint's step, tokens and stage are what its trajectory, phases and joins
    stand on; an import never changes them (not even with --replace). A file that gives one of
    them another value is refused, naming its lines; one that agrees writes nothing there.
    """
    models = sorted({c["model"] for c in checkpoints})
    measured = wh.query(
        "SELECT model, checkpoint, step AS had_step, tokens AS had_tokens, stage AS had_stage FROM checkpoints c "
        "WHERE list_contains(?, model) AND EXISTS (SELECT 1 FROM runs r WHERE r.model = c.model "
        "AND r.checkpoint = c.checkpoint AND r.kind <> 'import')",
        [models],
    )
    if measured.height == 0:
        return checkpoints
    rows = long.join(measured, on=["model", "checkpoint"], how="inner")
    differs = pl.lit(False)
    for column in ("step", "tokens", "stage"):
        given, had = pl.col(column), pl.col(f"had_{column}")
        differs = differs | (given.is_not_null() & (had.is_null() | (given != had)).fill_null(True))
    clash = rows.filter(differs)
    if clash.height:
        first = clash.row(0, named=True)
        said = ", ".join(f"{c} {first[c]}" for c in ("step", "tokens", "stage") if first[c] is not None)
        had = ", ".join(f"{c} {first['had_' + c]}" for c in ("step", "tokens", "stage"))
        raise InputError(
            f"{path}, {_lines(path, clash[ROW])}: {clash.select('model', 'checkpoint').n_unique()} checkpoint(s) an "
            f"ingest measured would change, e.g. {first['model']} {first['checkpoint']} ({had}; the file says {said}). "
            "An import never changes a measured checkpoint's step, tokens or stage: drop those columns or rows, "
            "or give the checkpoint another label"
        )
    kept = set(map(tuple, measured.select("model", "checkpoint").rows()))
    return [c for c in checkpoints if (c["model"], c["checkpoint"]) not in kept]


def import_metrics(wh: Warehouse, path: str | Path, model: str | None = None, replace: bool = False) -> pl.DataFrame:
    """Import a CSV/Parquet file of trajectories into `metrics`, `checkpoints` and `models`.

    Long files have columns `model, step, metric, value` (optional `checkpoint, tokens, stage,
    probe, layer, pooling, stderr`); wide files have `model, step` and one numeric column per
    metric (a `<metric>_stderr` column gives its standard error). A checkpoint without a label is
    called `step{N}` (`{stage}-step{N}` for post-training stages). Each model gets a `runs` row of
    kind `import`; importing the same file again changes nothing. A row whose value geowh measured
    (an ingest wrote it) is refused, naming the rows, unless `replace`. The step, tokens and stage
    of a checkpoint an ingest measured are never changed, `replace` or not: a file that disagrees
    is refused. Refused too, with their line: NaN or infinite values, negative or fractional
    steps and layers, negative stderr, unknown poolings and metric names that are columns
    (`step`, `model`, …).

    Returns one row per model: model, checkpoints, metrics, rows, status (imported/unchanged).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no metrics file at {path}")
    long = long_metrics(read_table(path), path, canonical_model(model) if model else None)
    digest = file_digest(path)
    done = imported_keys(wh)
    writes: dict[str, list] = {"runs": [], "checkpoints": [], "metrics": []}
    summary = []
    for name in sorted(long["model"].unique().to_list()):
        rows = long.filter(pl.col("model") == name)
        key = import_key(digest, "metrics", name)
        summary.append({
            "model": name,
            "checkpoints": rows["checkpoint"].n_unique(),
            "metrics": ",".join(sorted(rows["metric"].unique().to_list())),
            "rows": rows.height,
            "status": "unchanged" if key in done else "imported",
        })
        if key in done:
            continue
        run = import_run(key, name, None, {"what": "metrics", "source": str(path.resolve()), "sha256": digest})
        writes["runs"].append(run)
        checkpoints = rows.group_by("checkpoint").agg(
            pl.col("step").drop_nulls().first(), pl.col("tokens").drop_nulls().first(), pl.col("stage").drop_nulls().first()
        )
        writes["checkpoints"].extend(
            {"model": name, **c, "stage_order": STAGE_ORDER.get(c["stage"]) if c["stage"] else None}
            for c in checkpoints.sort("checkpoint").to_dicts()
        )
        writes["metrics"].append(rows.select(
            "model", "checkpoint", "probe", "layer", "pooling", "metric", "value", "stderr",
            pl.lit(json.dumps({"imported_from": path.name})).alias("params"), pl.lit(run["run_id"]).alias("run_id"),
        ))
    if writes["checkpoints"] and wh.path.exists():
        writes["checkpoints"] = _unmeasured(wh, writes["checkpoints"], long, path)
    if writes["metrics"] and wh.path.exists() and not replace:
        clash = measured_rows(wh, long.filter(pl.col("model").is_in([r["model"] for r in writes["runs"]])))
        if clash.height:
            named = "; ".join(
                f"{r['model']} {r['checkpoint']} {r['metric']} (probe {r['probe']}, layer {r['layer']}, {r['pooling']})"
                for r in clash.head(3).to_dicts()
            )
            raise InputError(
                f"{path}, {_lines(path, clash[ROW])}: {clash.height} row(s) would replace values an ingest "
                f"measured, e.g. {named}. Pass --replace to overwrite them, or drop those rows"
            )
    if writes["runs"]:
        models = new_models(wh, {r["model"] for r in writes["runs"]})
        wh.write({"models": models, "runs": writes["runs"], "checkpoints": writes["checkpoints"],
                  "metrics": pl.concat(writes["metrics"])})
    return pl.DataFrame(summary, schema={"model": pl.String, "checkpoints": pl.Int64, "metrics": pl.String,
                                         "rows": pl.Int64, "status": pl.String})
