"""`geowh report` on a 10M-row warehouse: build time and file size, 10 models × 154 checkpoints.

    python bench/report.py [--models 10 --layers 25 --metrics 260 --d 2048 --db /tmp/geowh-bench-report.duckdb]

The warehouse is bench/queries.py's (DuckDB generates it: models × 154 Pythia checkpoints ×
layers × metrics rows in `metrics`, default 10 × 154 × 25 × 260 = 10.0M, and 50 eval tasks),
plus what the report draws beyond it: each model's parameter count (so the FLOPs axis works),
a spectrum of d eigenvalues at the last layer of every checkpoint (154 × 10 spectra, with the
fit parameters of their αReQ) and stored phases for every layer. Timed: the whole `report()`
call (queries, spectra cut to 128 ranks, HTML written), best of --repeat, warm file.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from geowh.queries import phase_map  # noqa: E402
from geowh.queries.report import report  # noqa: E402
from geowh.spectrum_math import compute_metrics  # noqa: E402
from geowh.warehouse import Warehouse  # noqa: E402
from queries import STEPS, build  # noqa: E402  (bench/queries.py)


def add_spectra(wh: Warehouse, models: int, layer: int, d: int) -> None:
    """A power-law spectrum per checkpoint of every model at `layer`, and its αReQ rows with their fit params."""
    rng = np.random.default_rng(0)
    k = np.arange(1, d + 1)
    for m in range(models):
        spectra, metrics = [], []
        for step in STEPS:
            alpha = 0.6 + 0.4 * np.sin(np.log10(step + 1))
            lam = np.sort(k ** -alpha * np.exp(0.05 * rng.standard_normal(d)))[::-1]
            key = {"model": f"bench-{m}", "checkpoint": f"step{step}", "probe": "fineweb-bench", "layer": layer,
                   "pooling": "last"}
            spectra.append({**key, "n_samples": 15000, "d": d, "eigenvalues": lam.tolist(), "run_id": "bench"})
            metrics += [{**key, "metric": v.metric, "value": v.value, "params": v.params, "run_id": "bench"}
                        for v in compute_metrics(lam, ["alpha_req"])]
        wh.write({"spectra": spectra, "metrics": metrics})


def add_parameters(wh: Warehouse) -> None:
    """bench-0 410M parameters, bench-1 820M, …: so that the FLOPs axis of every model is known."""
    wh.execute("UPDATE models SET parameters = 410000000::BIGINT * (1 + CAST(regexp_extract(model, '\\d+$') AS INTEGER))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--layers", type=int, default=25)
    parser.add_argument("--metrics", type=int, default=260)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", type=Path, default=Path("/tmp/geowh-bench-report.duckdb"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/geowh-bench-report.html"))
    parser.add_argument("--reuse", action="store_true", help="Reuse --db if it exists instead of rebuilding it.")
    args = parser.parse_args()

    start = time.perf_counter()
    if not (args.reuse and args.db.exists()):
        build(args.db, args.models, args.layers, args.metrics)
    wh = Warehouse(args.db)
    # Each step is skipped when done, so --reuse finishes an interrupted build.
    if wh.query("SELECT count(*) AS n FROM spectra")["n"][0] == 0:
        add_spectra(wh, args.models, args.layers - 1, args.d)
    add_parameters(wh)
    if wh.query("SELECT count(*) AS n FROM phases")["n"][0] == 0:
        for m in range(args.models):
            phase_map(wh, f"bench-{m}")
    built = time.perf_counter() - start
    rows = wh.query("SELECT count(*) AS n FROM metrics")["n"][0]
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        summary = report(wh, args.out, force=True)
        times.append(time.perf_counter() - t)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(json.dumps({"metric_rows": int(rows), "models": len(summary.models), "checkpoints": summary.checkpoints,
                      "spectra": summary.spectra, "d": args.d, "charts": len(summary.charts),
                      "report_bytes": summary.bytes, "report_s_best": round(min(times), 2),
                      "report_s_all": [round(t, 2) for t in times], "build_s": round(built, 1),
                      "loadavg_after": load}))


if __name__ == "__main__":
    main()
