"""An ingest on Ray against the same ingest in one process, side by side in one run.

    python bench/distributed.py [--checkpoints 8] [--layers 4] [--d 256] [--n 256] [--max-len 128] [--workers 2]

Builds a local series of random-weight GPT-NeoX checkpoints (tests/tiny.py), ingests it serially
(`Serial`, torch on every core) and with `RayExecutor` on a private local Ray instance (`--workers`
tasks at once, each with an equal share of the cores), into two warehouses, and reports:
seconds for each, Ray's start-up apart, the ratio, and the largest relative difference between
the two warehouses' metric values (the goal: ≤ 1e-6). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--n", type=int, default=256, help="probe texts")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from faults import metrics
    from tiny import save_series, write_docs

    from geowh.ingest import IngestConfig, ingest
    from geowh.ingest.engine.cluster import RayExecutor

    with tempfile.TemporaryDirectory(prefix="geowh-bench-ray-") as tmp:
        work = Path(tmp)
        run = save_series(work / "run", steps=tuple(range(args.checkpoints)), layers=args.layers, d=args.d,
                          heads=max(1, args.d // 64))
        write_docs(work / "docs.txt")
        config = IngestConfig(probe=str(work / "docs.txt"), n=args.n, max_len=args.max_len, layers="all")

        clock = time.perf_counter()
        serial = ingest(str(run), config, db=work / "serial.duckdb")
        serial_s = time.perf_counter() - clock

        clock = time.perf_counter()
        with RayExecutor("local", workers=args.workers) as executor:
            start_s = time.perf_counter() - clock
            clock = time.perf_counter()
            distributed = ingest(str(run), config, db=work / "ray.duckdb", executor=executor)
            ray_s = time.perf_counter() - clock

        a, b = metrics(work / "serial.duckdb"), metrics(work / "ray.duckdb")
        same_keys = [r[:-1] for r in a] == [r[:-1] for r in b]
        worst = max(abs(x[-1] - y[-1]) / max(abs(x[-1]), 1e-12) for x, y in zip(a, b))
    result = {
        "checkpoints": args.checkpoints, "layers": args.layers, "d": args.d, "n": args.n, "max_len": args.max_len,
        "workers": args.workers, "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
        "serial_s": round(serial_s, 2), "ray_start_s": round(start_s, 2), "ray_s": round(ray_s, 2),
        "speedup": round(serial_s / ray_s, 2),
        "ok": [serial.count("ok"), distributed.count("ok")],
        "metric_rows": len(a), "same_keys": same_keys, "max_relative_difference": worst,
    }
    print(f"serial                 {serial_s:8.2f} s  ({serial.count('ok')} checkpoints ok)")
    print(f"Ray, {args.workers} workers         {ray_s:8.2f} s  (+ {start_s:.2f} s to start Ray)")
    print(f"serial / Ray           {serial_s / ray_s:8.2f}×")
    print(f"metric values          {len(a)} rows, largest relative difference {worst:.2e}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
