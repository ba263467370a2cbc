"""A small warehouse with everything the report draws, written in a second from synthetic spectra.

Two models of different sizes (parameters known, so the FLOPs axis works), 14 checkpoints each,
three layers, spectra whose power-law exponent follows the warmup → entropy → compression shape,
metrics computed from them by the registry (so αReQ carries its real fit parameters), stored
phases (last layer and per layer), two imported evals and a memorization score, and run rows.
"""

from __future__ import annotations

import numpy as np

from geowh.spectrum_math import compute_metrics
from geowh.warehouse import Warehouse, utcnow

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000]
MODELS = {"small": (70_000_000, 2_097_152), "large": (410_000_000, 2_097_152)}  # parameters, tokens per step
D, N = 64, 400


def exponent(step: int, layer: int, size: float) -> float:
    """αReQ-like decay: rises to step 64 (warmup), falls to 1000 (entropy-seeking), rises after."""
    # Deeper layers collapse later: the warmup ends at step 64 in layer 0, about 250 in layer 2.
    t, late = np.log10(step + 1), 0.3 * layer
    shape = (0.6 + 0.5 * min(t / (1.8 + late), 1.0) - 0.6 * np.clip((t - 1.8 - late) / (1.2 - late), 0, 1)
             + 0.3 * np.clip((t - 3.0) / 0.6, 0, 1))
    return float(shape * (1 + 0.1 * layer) * size)


def build(path) -> Warehouse:
    wh = Warehouse(path)
    rng = np.random.default_rng(0)
    now = utcnow()
    rows: dict[str, list] = {t: [] for t in ("models", "checkpoints", "probes", "runs", "spectra", "metrics", "evals")}
    rows["probes"].append({"probe": "probe-abc", "name": "probe.txt", "sequences": N, "max_len": 64,
                           "content_hash": "abc"})
    for m, (params, per_step) in MODELS.items():
        rows["models"].append({"model": m, "family": "local", "parameters": params, "layers": 2, "d_model": D})
        size = 1.0 if m == "small" else 1.3
        for step in STEPS:
            ck = f"step{step}"
            run = f"run-{m}-{step}"
            rows["checkpoints"].append({"model": m, "checkpoint": ck, "step": step, "tokens": float(step * per_step),
                                        "stage": "pretrain", "stage_order": 0})
            rows["runs"].append({"run_id": run, "kind": "geometry", "model": m, "checkpoint": ck, "probe": "probe-abc",
                                 "status": "ok", "geowh_version": "0.1.0", "device": "cpu", "dtype": "float32",
                                 "hub_commit": f"{step:040x}", "started_at": now, "finished_at": now})
            for layer in range(3):
                k = np.arange(1, D + 1)
                lam = k ** -exponent(step, layer, size) * np.exp(0.05 * rng.standard_normal(D))
                lam = np.sort(lam)[::-1]
                key = {"model": m, "checkpoint": ck, "probe": "probe-abc", "layer": layer, "pooling": "last"}
                rows["spectra"].append({**key, "n_samples": N, "d": D, "eigenvalues": lam.tolist(), "run_id": run})
                for v in compute_metrics(lam, ["rankme", "alpha_req"]):
                    rows["metrics"].append({**key, "metric": v.metric, "value": v.value, "params": v.params,
                                            "run_id": run})
            rows["metrics"].append({"model": m, "checkpoint": ck, "probe": "qa-task", "metric": "memorization_spearman",
                                    "value": 0.1 + 0.02 * np.log1p(step), "params": {"n": 50}, "index_dir": "/idx",
                                    "run_id": run})
            for task in ("sciq", "lambada_openai"):  # two: the page draws one at a time
                rows["evals"].append({"model": m, "checkpoint": ck, "step": step, "task": task, "metric": "acc",
                                      "filter": "none", "num_fewshot": 0, "value": 0.2 + 0.1 * np.log1p(step) / 8})
    wh.write(rows)
    return wh
