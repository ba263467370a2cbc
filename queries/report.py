"""`geowh report`: one self-contained, interactive HTML file of what the warehouse holds.

The report is for reading and sending: one file that opens offline in any browser (plotly.js,
from the `plotly` package installed from PyPI, is inlined; nothing is fetched at view time) and
holds, for the chosen models, the RankMe/αReQ trajectories with their stored phases shaded and
the isotropic-random baseline, an eigenspectrum viewer with the αReQ fit line, per-layer
heatmaps, memorization scores and imported evals on the same switchable axis (step, tokens,
training FLOPs), the phases with their evidence, and the provenance of the numbers.

Why plotly: plotly.js ships inside the plotly wheel as one minified file, so inlining it needs
no other tool, and its imperative API (`Plotly.react`) lets a page of plain JavaScript switch the
x axis and walk through checkpoints over data embedded once, instead of one embedded copy per
view. The file stays small because spectra are cut to at most `SPECTRUM_POINTS` log-spaced
ranks and stored as base64 float32 (docs/report.md has the sizes).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl

from geowh.errors import GeowhError, InputError, WarehouseError
from geowh.outputs import check_output, output_path
from geowh.progress import Progress, silent
from geowh.queries.series import fit_flags, load_series, models_arg, pick_series
from geowh.spectrum_math import isotropic_baseline, isotropic_spectrum
from geowh.warehouse import Warehouse, utcnow

GEOMETRY = ("rankme", "alpha_req")
# Ranks kept of each spectrum: log-spaced, so the log-log plot keeps its shape (and the fit
# range is drawn from the exact fit, not from the kept points).
SPECTRUM_POINTS = 128


@dataclass(frozen=True)
class ReportSummary:
    """What `report` wrote."""

    out: Path
    bytes: int
    models: list[str]
    checkpoints: int
    spectra: int
    charts: list[str]

    def to_dict(self) -> dict:
        return {"out": str(self.out), "bytes": self.bytes, "models": self.models, "checkpoints": self.checkpoints,
                "spectra": self.spectra, "charts": self.charts}


def report(
    wh: Warehouse,
    out: str | Path = "report.html",
    models: str | Sequence[str] | None = None,
    metrics: str | Sequence[str] = GEOMETRY,
    force: bool = False,
    progress: Progress = silent,
) -> ReportSummary:
    """Write the HTML report of `models` (default: every model with metrics or evals) to `out`.

    `metrics` are the trajectory panels (rankme and alpha_req, and any other metric name).
    The file is written whole or not at all; an existing one is replaced only with `force`.

    >>> report(Warehouse("geowh.duckdb"), "report.html", models="pythia-410m,pythia-1b")
    """
    out = Path(out)
    check_output(out, force=force, protect=[wh.path])
    with wh.connect(read_only=True) as con:
        # _Held answers the part of Warehouse the report asks (path, query) on the held connection.
        data = report_data(cast(Warehouse, _Held(wh, con)), models, metrics, progress)
    page = render(data)
    with output_path(out, force=force, protect=[wh.path]) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return ReportSummary(
        out=out, bytes=out.stat().st_size, models=[m["model"] for m in data["models"]],
        checkpoints=sum(len(m["trajectory"]["checkpoint"]) for m in data["models"]),
        spectra=sum(len(m["spectra"]["checkpoint"]) for m in data["models"]), charts=data["charts"],
    )


class _Held:
    """The warehouse through one read-only connection held for the whole report: it asks about
    a dozen questions per model, and opening the file for each cost more than the answers
    (7 of 16 s at 10M metric rows)."""

    def __init__(self, wh: Warehouse, con):
        self.path, self._con = wh.path, con

    def query(self, statement: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        try:
            return self._con.sql(statement, params=params or None).pl()
        except Exception as e:  # duckdb.Error; duckdb is not imported here
            raise WarehouseError(f"query failed: {str(e).splitlines()[0]}") from None


def report_data(
    wh: Warehouse, models: str | Sequence[str] | None = None, metrics: str | Sequence[str] = GEOMETRY,
    progress: Progress = silent,
) -> dict:
    """Everything the page draws, as JSON-ready dicts (the page embeds this once)."""
    metrics = _names(metrics) or list(GEOMETRY)
    names = models_arg(models) if models else _all_models(wh)
    if not names:
        raise InputError(f"{wh.path} holds no metrics or evals to report: ingest, import-metrics or import-evals first")
    known = set(_all_models(wh))
    if unknown := [m for m in names if m not in known]:
        raise InputError(
            f"no metrics or evals for {', '.join(unknown)} in {wh.path} (models: {', '.join(sorted(known)) or 'none'})"
        )
    found = [_model_data(wh, model, metrics, progress) | {"index": i} for i, model in enumerate(names)]
    charts = [f"trajectory-{m}" for m in metrics if any(d["trajectory"].get(m) for d in found)]
    if any(d["spectra"]["checkpoint"] for d in found):
        charts.append("spectrum")
    charts += [f"layers-{d['index']}-{m}" for d in found if d["layers"] for m in GEOMETRY if m in d["layers"]["values"]]
    if any(d["memorization"] for d in found):
        charts.append("memorization")
    if any(d["evals"] for d in found):
        charts.append("evals")
    return {
        "title": "geowh report: " + ", ".join(names),
        "generated": utcnow().replace(tzinfo=UTC).isoformat(timespec="seconds"),
        "warehouse": str(wh.path),
        "geowh_version": _version(),
        "metrics": metrics,
        "models": found,
        "phases": _phases_table(wh, names),
        "provenance": _provenance(wh, names),
        "charts": charts,
    }


def _model_data(wh: Warehouse, model: str, metrics: list[str], progress: Progress) -> dict:
    row = wh.query("SELECT * FROM models WHERE model = ?", [model])
    info = row.to_dicts()[0] if row.height else {"model": model}
    data: dict = {
        "model": model, "index": 0, "parameters": info.get("parameters"), "layers_total": info.get("layers"),
        "d_model": info.get("d_model"), "pick": None, "trajectory": {"checkpoint": []}, "phases": [],
        "baseline": None, "spectra": {"checkpoint": []}, "layers": None, "memorization": [], "evals": [],
    }
    wanted = [m for m in metrics if _has_metric(wh, model, m)]
    if wanted:
        pick = pick_series(wh, model, wanted)  # the page names the probe, layer and pooling it shows
        data["pick"] = {"probe": pick.probe, "layer": pick.layer, "pooling": pick.pooling}
        series = load_series(wh, pick, wanted)
        if "alpha_req" in wanted:
            series = series.join(fit_flags(wh, pick), on="checkpoint", how="left")
        data["trajectory"] = _columns(series, ["checkpoint", "stage", "step", "tokens", "flops", *wanted]
                                      + (["alpha_req_fit"] if "alpha_req" in wanted else []))
        data["phases"] = _shaded_phases(wh, pick)
        data["spectra"], data["baseline"] = _spectra(wh, pick)
        data["layers"] = _layers(wh, pick)
    data["memorization"] = _memorization(wh, model)
    data["evals"] = _evals(wh, model)
    data["axes"] = _axes(wh, model) if data["memorization"] or data["evals"] else None
    return data


def _all_models(wh: Warehouse) -> list[str]:
    return wh.query(
        "SELECT DISTINCT model FROM (SELECT model FROM metrics UNION ALL SELECT model FROM evals) ORDER BY model"
    )["model"].to_list()


def _has_metric(wh: Warehouse, model: str, metric: str) -> bool:
    return wh.query("SELECT 1 FROM metrics WHERE model = ? AND metric = ? AND index_dir IS NULL LIMIT 1",
                    [model, metric]).height > 0


def _shaded_phases(wh: Warehouse, pick) -> list[dict]:
    """The stored phases of the trajectory drawn (basis `both` first); computed, not stored, when none are."""
    stored = wh.query(
        "SELECT phase, stage, start_step, end_step, start_tokens, end_tokens, start_flops, end_flops, basis "
        "FROM phases WHERE model = ? AND probe IS NOT DISTINCT FROM ? AND layer IS NOT DISTINCT FROM ? "
        "AND pooling IS NOT DISTINCT FROM ? ORDER BY basis = 'both' DESC, basis, phase_index",
        [pick.model, pick.probe, pick.layer, pick.pooling],
    )
    if stored.height:
        basis = stored["basis"][0]
        return stored.filter(pl.col("basis") == basis).to_dicts()
    from geowh.queries.phases import phases

    try:
        found = phases(wh, pick.model, pick.probe, pick.layer, pick.pooling, store=False)
    except GeowhError:
        return []
    return found.select("phase", "stage", "start_step", "end_step", "start_tokens", "end_tokens", "start_flops",
                        "end_flops", "basis").to_dicts()


def _spectra(wh: Warehouse, pick) -> tuple[dict, dict | None]:
    """The trajectory's spectra, cut to log-spaced ranks (base64 float32 of λ/λ₁), each with its αReQ fit line."""
    rows = wh.query(
        """
        SELECT s.checkpoint, c.step, s.n_samples, s.d, s.eigenvalues, a.value AS alpha, a.params
        FROM spectra s JOIN checkpoints c USING (model, checkpoint)
        LEFT JOIN metrics a ON a.model = s.model AND a.checkpoint = s.checkpoint AND a.probe = s.probe
             AND a.layer = s.layer AND a.pooling = s.pooling AND a.metric = 'alpha_req' AND a.index_dir IS NULL
        WHERE s.model = ? AND s.probe IS NOT DISTINCT FROM ? AND s.layer IS NOT DISTINCT FROM ?
          AND s.pooling IS NOT DISTINCT FROM ?
        ORDER BY coalesce(c.stage_order, 0), c.step, s.checkpoint
        """,
        [pick.model, pick.probe, pick.layer, pick.pooling],
    )
    out: dict = {"checkpoint": [], "step": [], "ranks": [], "values": [], "fit": []}
    if rows.height == 0:
        return out, None
    grids: dict[int, int] = {}
    for r in rows.iter_rows(named=True):
        lam = np.sort(np.asarray(r["eigenvalues"], dtype=np.float64))[::-1]
        if lam.size == 0 or lam[0] <= 0:
            continue
        ranks = _ranks(lam.size)
        if lam.size not in grids:
            grids[lam.size] = len(out["ranks"])
            out["ranks"].append(ranks.tolist())
        kept = lam[ranks - 1] / lam[0]
        kept[kept <= 0] = np.nan  # zeros have no place on a log axis
        out["checkpoint"].append(r["checkpoint"])
        out["step"].append(r["step"])
        out["values"].append({"grid": grids[lam.size], "b64": _b64(kept)})
        out["fit"].append(_fit_line(lam, r["alpha"], json.loads(r["params"]) if r["params"] else {}))
    n, d = rows.group_by("n_samples", "d").len().sort("len", descending=True).row(0)[:2]
    base = isotropic_spectrum(int(n), int(d))
    ranks = _ranks(int(d))
    baseline = {"n": int(n), "d": int(d), **_finite(isotropic_baseline(int(n), int(d))),
                "ranks": ranks.tolist(), "b64": _b64(np.where(base[ranks - 1] > 0, base[ranks - 1] / base[0], np.nan))}
    return out, baseline


def _ranks(size: int) -> np.ndarray:
    return np.unique(np.round(np.logspace(0, math.log10(size), min(SPECTRUM_POINTS, size))).astype(int))


def _fit_line(lam: np.ndarray, alpha: float | None, params: dict) -> list | None:
    """[k₀, y₀, k₁, y₁]: the fitted power law λ/λ₁ at the ends of its fit range (weighted as the fit is)."""
    span = params.get("fit_range")
    if alpha is None or not np.isfinite(alpha) or not span:
        return None
    k = np.arange(span[0], span[1] + 1)
    y = lam[k - 1] / lam[0]
    k, y = k[y > 0], y[y > 0]
    if k.size < 2:
        return None
    w = 1.0 / k
    intercept = float(np.dot(w, np.log(y) + alpha * np.log(k)) / w.sum())
    return [int(k[0]), math.exp(intercept - alpha * math.log(k[0])), int(k[-1]), math.exp(intercept - alpha * math.log(k[-1]))]


def _layers(wh: Warehouse, pick) -> dict | None:
    """layer × checkpoint of RankMe and αReQ (probe and pooling of the trajectory), with per-layer phase boundaries."""
    rows = wh.query(
        """
        SELECT m.layer, m.checkpoint, c.step, m.metric, m.value
        FROM metrics m JOIN checkpoints c USING (model, checkpoint)
        WHERE m.model = ? AND m.probe IS NOT DISTINCT FROM ? AND m.pooling IS NOT DISTINCT FROM ?
          AND m.metric IN ('rankme', 'alpha_req') AND m.index_dir IS NULL AND m.layer IS NOT NULL
        ORDER BY coalesce(c.stage_order, 0), c.step, m.checkpoint
        """,
        [pick.model, pick.probe, pick.pooling],
    )
    layers = sorted(rows["layer"].unique().to_list())
    if len(layers) < 2:
        return None
    order = rows.select("checkpoint", "step").unique("checkpoint", maintain_order=True)
    values = {}
    for metric in GEOMETRY:
        part = rows.filter(pl.col("metric") == metric)
        if part.height == 0:
            continue
        wide = part.pivot(on="layer", index="checkpoint", values="value", aggregate_function="first")
        wide = order.join(wide, on="checkpoint", how="left")
        values[metric] = [[_num(v, 4) for v in wide[str(layer)].to_list()] if str(layer) in wide.columns
                          else [None] * order.height for layer in layers]
    bounds = wh.query(
        "SELECT layer, phase, start_step, end_step FROM phases WHERE model = ? AND probe IS NOT DISTINCT FROM ? "
        "AND pooling IS NOT DISTINCT FROM ? AND basis = 'both' AND layer IS NOT NULL ORDER BY layer, phase_index",
        [pick.model, pick.probe, pick.pooling],
    )
    return {"layers": layers, "checkpoint": order["checkpoint"].to_list(), "step": order["step"].to_list(),
            "values": values, "phases": bounds.to_dicts()}


def _memorization(wh: Warehouse, model: str) -> list[dict]:
    rows = wh.query(
        'SELECT metric, task, "index", step, value FROM memorization WHERE model = ? ORDER BY metric, task, "index", step',
        [model],
    )
    return _grouped(rows, ["metric", "task", "index"])


def _evals(wh: Warehouse, model: str) -> list[dict]:
    """Every task/metric at its lowest few-shot count, filter `none` where there is one."""
    rows = wh.query(
        """
        WITH chosen AS (
            SELECT task, metric, min(num_fewshot) AS num_fewshot,
                   CASE WHEN bool_or(filter = 'none') THEN 'none' ELSE min(filter) END AS filter
            FROM evals WHERE model = ? GROUP BY ALL
        )
        SELECT e.task || '/' || e.metric AS series, coalesce(c.step, e.step) AS step, max(e.value) AS value
        FROM evals e JOIN chosen USING (task, metric, num_fewshot, filter)
        LEFT JOIN checkpoints c ON c.model = e.model AND c.checkpoint = e.checkpoint
        WHERE e.model = ? GROUP BY ALL ORDER BY series, step
        """,
        [model, model],
    )
    return _grouped(rows, ["series"])


def _grouped(rows: pl.DataFrame, keys: list[str]) -> list[dict]:
    """One dict per series: its keys, step and value (the page finds tokens and FLOPs in the model's `axes`)."""
    out = []
    for key, part in rows.group_by(keys, maintain_order=True):
        out.append({**dict(zip(keys, key)), "step": part["step"].to_list(),
                    "value": [_num(v, 5) for v in part["value"].to_list()]})
    return out


def _axes(wh: Warehouse, model: str) -> dict:
    """checkpoint, step, tokens and FLOPs of every checkpoint of the model with a step, in order."""
    rows = wh.query(
        "SELECT c.checkpoint, c.step, c.tokens, 6.0 * m.parameters * c.tokens AS flops FROM checkpoints c "
        "LEFT JOIN models m USING (model) WHERE c.model = ? AND c.step IS NOT NULL "
        "ORDER BY coalesce(c.stage_order, 0), c.step",
        [model],
    ).unique("step", keep="first", maintain_order=True)
    return _columns(rows, ["checkpoint", "step", "tokens", "flops"])


def _phases_table(wh: Warehouse, models: list[str]) -> list[dict]:
    rows = wh.query(
        f"SELECT model, probe, layer, pooling, basis, phase_index, phase, stage, matches_paper, start_step, end_step, "
        f"start_tokens, end_tokens, delta_rankme, delta_alpha_req, evidence, method "
        f"FROM phases WHERE model IN ({', '.join('?' * len(models))}) "
        "ORDER BY model, probe, layer, pooling, basis, phase_index",
        models,
    )
    return [{k: _num(v) for k, v in r.items()} for r in rows.to_dicts()]


def _provenance(wh: Warehouse, models: list[str]) -> dict:
    marks = ", ".join("?" * len(models))
    runs = wh.query(
        f"""
        SELECT model, kind, status, count(*) AS runs,
               string_agg(DISTINCT geowh_version, ', ') AS geowh,
               string_agg(DISTINCT torch_version, ', ') AS torch,
               string_agg(DISTINCT transformers_version, ', ') AS transformers,
               string_agg(DISTINCT device, ', ') AS device, string_agg(DISTINCT dtype, ', ') AS dtype,
               count(DISTINCT hub_commit) AS hub_commits, min(started_at)::TEXT AS first, max(finished_at)::TEXT AS last
        FROM runs WHERE model IN ({marks}) GROUP BY ALL ORDER BY model, kind, status
        """,
        models,
    )
    commits = wh.query(
        f"SELECT model, checkpoint, hub_commit FROM runs WHERE model IN ({marks}) AND hub_commit IS NOT NULL "
        "GROUP BY ALL ORDER BY model, checkpoint",
        models,
    )
    probes = wh.query(
        f"SELECT * FROM probes WHERE probe IN (SELECT DISTINCT probe FROM runs WHERE model IN ({marks})) ORDER BY probe",
        models,
    )
    return {"runs": runs.to_dicts(), "hub_commits": commits.to_dicts(), "probes": probes.to_dicts()}


def _columns(frame: pl.DataFrame, names: list[str]) -> dict:
    return {n: [_num(v) for v in frame[n].to_list()] if n in frame.columns else [None] * frame.height for n in names}


def _num(v, digits: int = 6):
    """JSON-ready: NaN/inf → null, floats to `digits` significant digits (the page shows 4)."""
    if isinstance(v, float):
        return float(f"{v:.{digits}g}") if math.isfinite(v) else None
    return v


def _finite(values: dict) -> dict:
    return {k: _num(float(v)) for k, v in values.items()}


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


def _names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v and v.strip()]


def _version() -> str:
    from geowh import __version__

    return __version__


# -- the page -------------------------------------------------------------------------------------


def plotly_js() -> str:
    """plotly.min.js from the installed `plotly` package (inlined: the page fetches nothing)."""
    try:
        return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise InputError("geowh report needs the plotly package: pip install plotly") from None


def render(data: dict) -> str:
    """The HTML page of `report_data`'s dict.

    plotly.js and the data are embedded gzipped and base64-encoded, and unpacked by the browser
    (DecompressionStream: Chrome 80, Firefox 113, Safari 16.4): the file is a third of its plain
    size (4.8 MB of plotly.js become 1.9 MB), still one file that fetches nothing.
    """
    payload = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    return (PAGE.replace("%TITLE%", html.escape(data["title"]))
            .replace("%STYLE%", STYLE)
            .replace("%PLOTLY%", _packed_plotly())
            .replace("%DATA%", _packed(payload))
            .replace("%APP%", APP))


def _packed(text: str) -> str:
    # Level 6: 3x faster than 9 on plotly.js for 1 % more bytes; mtime=0: the same data gives the same file.
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)).decode("ascii")


@cache
def _packed_plotly() -> str:
    return _packed(plotly_js())


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.controls { position: sticky; top: 0; background: #fff; padding: .5em 0; z-index: 10; border-bottom: 1px solid #eee; }
.controls label { margin-right: 1.5em; }
.geowh-chart { width: 100%; height: 340px; }
.heat { height: 280px; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
.note { color: #666; font-size: 12px; } details pre { margin: 0; font-size: 11px; }
.flag { color: #b00; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<meta name="generator" content="geowh report">
<style>%STYLE%</style>
</head><body>
<h1>%TITLE%</h1>
<p class="note" id="meta">Loading… (the page needs JavaScript; it fetches nothing)</p>
<div class="controls">
 <label>x axis <select id="x-axis"><option value="step">step</option><option value="tokens">tokens</option>
 <option value="flops">training FLOPs (6·N·D)</option></select></label>
 <label><input type="checkbox" id="baseline" checked> isotropic random baseline (same n, d)</label>
 <span class="note" id="axis-note"></span>
</div>
<section id="trajectories"><h2>Trajectories</h2>
<p class="note">Phases shaded (grey warmup, blue entropy-seeking, orange compression-seeking; with several
models, a band per model at the bottom). Open markers: αReQ from a flagged fit (short: fewer than 20
eigenvalues; poor: R² &lt; 0.9). Dashed: isotropic random features of the same n and d (drawn when near
the trajectories; its value is in the legend).</p></section>
<section id="spectra"><h2>Eigenspectrum</h2>
<label>model <select id="spectrum-model"></select></label>
<label>checkpoint <input type="range" id="spectrum-checkpoint" min="0" max="0" value="0" style="width:50%"></label>
<span id="spectrum-label"></span>
<div class="geowh-chart" id="spectrum"></div></section>
<section id="layers"><h2>Per layer</h2></section>
<section id="memorization-section"><h2>Memorization and evals</h2>
<div class="geowh-chart" id="memorization"></div>
<label id="eval-choice">eval <select id="eval-series"></select></label><div class="geowh-chart" id="evals"></div></section>
<section><h2>Phases</h2><div id="phases-table"></div></section>
<section><h2>Provenance</h2><div id="provenance"></div></section>
<script type="application/gzip;base64" id="plotly-js">%PLOTLY%</script>
<script type="application/gzip;base64" id="geowh-data">%DATA%</script>
<script>%APP%</script>
</body></html>
"""

APP = r"""
"use strict";
let D = null;
// plotly.js and the data are gzipped and base64-encoded in the page (queries/report.py `render`).
async function unpack(id) {
  const bytes = Uint8Array.from(atob(document.getElementById(id).textContent), c => c.charCodeAt(0));
  return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
}
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e"];
const PHASE = {"warmup": "#bbbbbb", "entropy-seeking": "#9ecae1", "compression-seeking": "#fdae6b", "flat": "#eeeeee"};
const CONFIG = {responsive: true, displaylogo: false};
const AXIS_NAME = {step: "step", tokens: "tokens", flops: "training FLOPs"};
function colour(i) { return COLOURS[i % COLOURS.length]; }
function f32(b64) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  return Array.from(new Float32Array(bytes.buffer), v => (isNaN(v) ? null : v));
}
function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  if (a >= 1e15) return (v / 1e15).toPrecision(3) + "P"; if (a >= 1e12) return (v / 1e12).toPrecision(3) + "T";
  if (a >= 1e9) return (v / 1e9).toPrecision(3) + "B"; if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
  if (a >= 1e4) return (v / 1e3).toPrecision(3) + "k"; return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
function table(rows, columns) {
  if (!rows.length) return '<p class="note">none</p>';
  const cols = columns || Object.keys(rows[0]);
  return "<table><tr>" + cols.map(c => "<th>" + esc(c) + "</th>").join("") + "</tr>" + rows.map(r => "<tr>" +
    cols.map(c => "<td>" + (c === "evidence" && r[c] ? "<details><summary>evidence</summary><pre>" +
      esc(JSON.stringify(JSON.parse(r[c]), null, 1)) + "</pre></details>" : esc(fmt(r[c]))) + "</td>").join("") +
    "</tr>").join("") + "</table>";
}

// The log x axis: step + 1, or tokens/FLOPs + the first positive value, so that 0 is drawn.
let X = "step";
function offset(axis) {
  if (axis === "step") return 1;
  let low = Infinity;
  for (const m of D.models) for (const v of m.trajectory[axis] || []) if (v > 0 && v < low) low = v;
  for (const m of D.models) for (const v of (m.axes || {})[axis] || []) if (v > 0 && v < low) low = v;
  return isFinite(low) ? low : 1;
}
function xs(values, off) { return values.map(v => (v === null || v === undefined ? null : v + off)); }
function axisTitle() { const o = offset(X); return AXIS_NAME[X] + " + " + fmt(o) + " (log)"; }
function hover(name) {
  return "<b>%{meta}</b><br>checkpoint %{customdata[0]}<br>step %{customdata[1]}<br>tokens %{customdata[2]:.3s}" +
         "<br>FLOPs %{customdata[3]:.3s}<br>" + name + " %{y:.4g}%{customdata[4]}<extra></extra>";
}
function custom(s, flags) {
  return s.checkpoint.map((c, i) => [c, s.step[i], s.tokens[i], s.flops[i], flags && flags[i] && flags[i] !== "ok" ? "<br>fit: " + flags[i] : ""]);
}
function missingAxis() { return D.models.filter(m => m.trajectory.checkpoint.length && m.trajectory[X].some(v => v === null)).map(m => m.model); }

function phaseShapes(off) {
  const shapes = [], drawn = D.models.filter(m => m.phases.length);
  drawn.forEach((m, i) => {
    const band = drawn.length === 1 ? [0, 1] : [i * 0.04, (i + 1) * 0.04];
    for (const p of m.phases) {
      const a = p["start_" + X], b = p["end_" + X];
      if (a === null || b === null || a === undefined || b === undefined) continue;
      shapes.push({type: "rect", xref: "x", yref: "paper", x0: a + off, x1: b + off, y0: band[0], y1: band[1],
                   fillcolor: PHASE[p.phase] || "#eee", opacity: drawn.length === 1 ? 0.35 : 0.9, line: {width: 0}, layer: "below"});
    }
  });
  return shapes;
}

function drawTrajectories() {
  const off = offset(X), skip = missingAxis(), showBase = document.getElementById("baseline").checked;
  document.getElementById("axis-note").textContent = skip.length ? "not drawn on this axis (unknown " + (X === "flops" ? "parameters or tokens" : X) + "): " + skip.join(", ") : "";
  for (const metric of D.metrics) {
    const id = "trajectory-" + metric;
    if (!D.charts.includes(id)) continue;
    const traces = [];
    D.models.forEach((m, i) => {
      const t = m.trajectory;
      if (!t[metric] || skip.includes(m.model)) return;
      const flags = metric === "alpha_req" ? t.alpha_req_fit : null;
      traces.push({x: xs(t[X], off), y: t[metric], type: "scatter", mode: "lines+markers", name: m.model, meta: m.model,
                   line: {color: colour(i), width: 1.5}, customdata: custom(t, flags), hovertemplate: hover(metric),
                   marker: {size: 6, color: colour(i), symbol: (flags || []).map(f => f && f !== "ok" ? "circle-open" : "circle")}});
      if (showBase && m.baseline && m.baseline[metric] !== null && m.baseline[metric] !== undefined) {
        const xv = xs(t[X], off).filter(v => v !== null);
        traces.push({x: [Math.min(...xv), Math.max(...xv)], y: [m.baseline[metric], m.baseline[metric]], type: "scatter",
                     mode: "lines", name: m.model + " isotropic (n=" + m.baseline.n + ", d=" + m.baseline.d + "): " + fmt(m.baseline[metric]),
                     line: {color: colour(i), dash: "dash", width: 1}, hoverinfo: "name+y", isBaseline: true});
      }
    });
    // The y range follows the trajectories; a baseline far outside (RankMe of random features is near d)
    // would flatten them, so it is drawn only when near, and its value is always in the legend.
    const ys = traces.filter(t => !t.isBaseline).flatMap(t => t.y).filter(v => v !== null && isFinite(v));
    let range = null;
    if (ys.length) {
      let lo = Math.min(...ys), hi = Math.max(...ys);
      const span = (hi - lo) || Math.abs(hi) || 1;
      for (const t of traces.filter(t => t.isBaseline)) if (t.y[0] > lo - span && t.y[0] < hi + span) { lo = Math.min(lo, t.y[0]); hi = Math.max(hi, t.y[0]); }
      const pad = 0.06 * ((hi - lo) || span);
      range = [lo - pad, hi + pad];
    }
    Plotly.react(id, traces, {title: {text: metric === "alpha_req" ? "αReQ" : metric, x: 0.01},
      xaxis: {type: "log", title: {text: axisTitle()}}, yaxis: {title: {text: metric}, range: range, autorange: range === null}, shapes: phaseShapes(off),
      margin: {t: 36, r: 10, b: 48, l: 60}, legend: {font: {size: 10}}, hovermode: "closest"}, CONFIG);
  }
  drawSeries("memorization", D.models.flatMap((m, i) => m.memorization.map(s => [m, i, s, s.metric + " " + s.task])), "memorization (Spearman ρ)");
  const chosen = document.getElementById("eval-series").value;
  drawSeries("evals", D.models.flatMap((m, i) => m.evals.filter(s => s.series === chosen).map(s => [m, i, s, s.series])), "imported eval " + chosen);
}

// A memorization or eval series holds steps and values: checkpoint, tokens and FLOPs come from the model's axes.
function withAxes(m, s) {
  if (!s.checkpoint) {
    const at = new Map(m.axes.step.map((v, k) => [v, k]));
    for (const key of ["checkpoint", "tokens", "flops"]) s[key] = s.step.map(v => (at.has(v) ? m.axes[key][at.get(v)] : null));
  }
}
function drawSeries(id, items, title) {
  if (!D.charts.includes(id)) {
    document.getElementById(id).style.display = "none";
    if (!D.charts.includes("memorization") && !D.charts.includes("evals")) document.getElementById("memorization-section").style.display = "none";
    return;
  }
  const off = offset(X), dashes = ["solid", "dot", "dash", "longdash", "dashdot"];
  const names = [...new Set(items.map(x => x[3]))];
  items.forEach(([m, , s]) => withAxes(m, s));
  const traces = items.filter(([m]) => !missingAxis().includes(m.model)).map(([m, i, s, name]) => ({
    x: xs(s[X], off), y: s.value, type: "scatter", mode: "lines+markers", name: m.model + " " + name, meta: m.model + " " + name,
    line: {color: colour(i), dash: dashes[names.indexOf(name) % dashes.length], width: 1.2}, marker: {size: 4},
    customdata: custom(s, null), hovertemplate: hover(name)}));
  Plotly.react(id, traces, {title: {text: title, x: 0.01}, xaxis: {type: "log", title: {text: axisTitle()}},
    margin: {t: 36, r: 10, b: 48, l: 60}, legend: {font: {size: 10}}, hovermode: "closest"}, CONFIG);
}

// Eigenspectrum viewer: model selector and checkpoint slider.
let specModels = [];  // models with stored spectra, set by start()
function drawSpectrum() {
  if (!specModels.length) { document.getElementById("spectra").style.display = "none"; return; }
  const m = specModels[+document.getElementById("spectrum-model").value];
  const slider = document.getElementById("spectrum-checkpoint");
  const i = Math.min(+slider.value, m.spectra.checkpoint.length - 1);
  const v = m.spectra.values[i], ranks = m.spectra.ranks[v.grid], y = f32(v.b64), fit = m.spectra.fit[i];
  const traces = [{x: ranks, y: y, type: "scatter", mode: "lines+markers", marker: {size: 3}, name: "λ/λ₁ " + m.spectra.checkpoint[i],
                   line: {color: colour(D.models.indexOf(m))}, hovertemplate: "rank %{x}<br>λ/λ₁ %{y:.3g}<extra></extra>"}];
  if (fit) traces.push({x: [fit[0], fit[2]], y: [fit[1], fit[3]], type: "scatter", mode: "lines", name: "αReQ fit, ranks " + fit[0] + "–" + fit[2],
                        line: {color: "#000", dash: "dash", width: 2}});
  if (document.getElementById("baseline").checked && m.baseline)
    traces.push({x: m.baseline.ranks, y: f32(m.baseline.b64), type: "scatter", mode: "lines", name: "isotropic random (n=" + m.baseline.n + ", d=" + m.baseline.d + ")",
                 line: {color: "#999", dash: "dot", width: 1}});
  const t = m.trajectory, j = t.checkpoint.indexOf(m.spectra.checkpoint[i]);
  const alpha = j >= 0 && t.alpha_req ? t.alpha_req[j] : null, flag = j >= 0 && t.alpha_req_fit ? t.alpha_req_fit[j] : null;
  document.getElementById("spectrum-label").innerHTML = esc(m.spectra.checkpoint[i]) + " (step " + fmt(m.spectra.step[i]) +
    "), αReQ " + fmt(alpha) + (flag && flag !== "ok" ? ' <span class="flag">fit: ' + esc(flag) + "</span>" : "");
  const gd = document.getElementById("spectrum");
  gd.dataset.checkpoint = m.spectra.checkpoint[i];
  Plotly.react(gd, traces, {title: {text: m.model + " " + m.spectra.checkpoint[i], x: 0.01},
    xaxis: {type: "log", title: {text: "rank"}}, yaxis: {type: "log", title: {text: "λ / λ₁"}, exponentformat: "power"},
    margin: {t: 36, r: 10, b: 48, l: 60}, legend: {font: {size: 10}}}, CONFIG);
}
function setupSpectrum() {
  const sel = document.getElementById("spectrum-model"), slider = document.getElementById("spectrum-checkpoint");
  specModels.forEach((m, i) => sel.add(new Option(m.model, i)));
  const reset = () => { const m = specModels[+sel.value]; if (!m) return; slider.max = m.spectra.checkpoint.length - 1; slider.value = slider.max; drawSpectrum(); };
  sel.addEventListener("change", reset);
  slider.addEventListener("input", drawSpectrum);
  reset();
}

// Per-layer heatmaps, layer × checkpoint, with each layer's stored phase boundaries marked.
function drawLayers() {
  const section = document.getElementById("layers");
  const withLayers = D.models.filter(m => m.layers);
  if (!withLayers.length) { section.style.display = "none"; return; }
  for (const m of withLayers) {
    for (const metric of ["rankme", "alpha_req"]) {
      if (!m.layers.values[metric]) continue;
      const id = "layers-" + m.index + "-" + metric, div = document.createElement("div");
      div.id = id; div.className = "geowh-chart heat"; section.appendChild(div);
      const labels = m.layers.step.map((s, i) => (s === null ? m.layers.checkpoint[i] : String(s)));
      const bx = [], by = [];
      for (const p of m.layers.phases) if (p.start_step !== null && p.start_step !== m.layers.step[0]) { const k = m.layers.step.indexOf(p.start_step); if (k >= 0) { bx.push(labels[k]); by.push(p.layer); } }
      const traces = [{z: m.layers.values[metric], x: labels, y: m.layers.layers, type: "heatmap", colorscale: "Viridis",
                       colorbar: {title: {text: metric}}, hovertemplate: "layer %{y}<br>step %{x}<br>" + metric + " %{z:.4g}<extra></extra>"}];
      if (bx.length) traces.push({x: bx, y: by, type: "scatter", mode: "markers", name: "phase boundary",
                                  marker: {symbol: "line-ns-open", size: 14, color: "#fff", line: {width: 2}}, hovertemplate: "boundary: layer %{y}, step %{x}<extra></extra>"});
      Plotly.newPlot(div, traces, {title: {text: m.model + ": " + (metric === "alpha_req" ? "αReQ" : metric) + " per layer", x: 0.01},
        xaxis: {type: "category", title: {text: "step"}}, yaxis: {title: {text: "layer"}, dtick: 1},
        margin: {t: 36, r: 10, b: 48, l: 60}, showlegend: false}, CONFIG);
    }
  }
}

function drawTables() {
  document.getElementById("meta").textContent = "geowh " + D.geowh_version + " · generated " + D.generated + " · " + D.warehouse +
    " · " + D.models.map(m => m.model + (m.pick ? " (probe " + m.pick.probe + ", layer " + m.pick.layer + ", " + m.pick.pooling + ")" : "")).join("; ");
  document.getElementById("phases-table").innerHTML = table(D.phases,
    ["model", "layer", "basis", "phase_index", "phase", "stage", "matches_paper", "start_step", "end_step", "start_tokens", "end_tokens", "delta_rankme", "delta_alpha_req", "evidence"]);
  const p = D.provenance;
  document.getElementById("provenance").innerHTML = "<h3>runs</h3>" + table(p.runs) + "<h3>probes</h3>" + table(p.probes) +
    "<h3>hub commits</h3>" + table(p.hub_commits);
}

document.getElementById("x-axis").addEventListener("change", e => { X = e.target.value; drawTrajectories(); });
document.getElementById("baseline").addEventListener("change", () => { drawTrajectories(); drawSpectrum(); });
function start() {
specModels = D.models.filter(m => m.spectra.checkpoint.length);
for (const metric of D.metrics) {
  if (!D.charts.includes("trajectory-" + metric)) continue;
  const div = document.createElement("div");
  div.id = "trajectory-" + metric; div.className = "geowh-chart";
  document.getElementById("trajectories").appendChild(div);
}
const evalSelect = document.getElementById("eval-series");
[...new Set(D.models.flatMap(m => m.evals.map(s => s.series)))].forEach(name => evalSelect.add(new Option(name, name)));
if (!evalSelect.options.length) document.getElementById("eval-choice").style.display = "none";
evalSelect.addEventListener("change", drawTrajectories);
drawTables();
drawTrajectories();
setupSpectrum();
drawLayers();
}
// Charts are drawn once both are unpacked; window.geowhReady settles then (the browser test waits on it).
window.geowhReady = (async () => {
  (0, eval)(await unpack("plotly-js"));  // indirect eval: plotly.js defines window.Plotly as its own file would
  D = JSON.parse(await unpack("geowh-data"));
  start();
})();
"""
