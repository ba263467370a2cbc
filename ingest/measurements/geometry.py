"""The geometry measurement: features of every (layer, pooling) → streaming covariances → spectra and metrics.

`process_checkpoint` (ingest/engine/run.py) runs it on the loaded checkpoint when
`config.geometry` is on; its rows go to `spectra` and `metrics`.
"""

from __future__ import annotations

import time
from pathlib import Path

from geowh.errors import InputError
from geowh.ingest.config import MIN_SUBSET_ROWS
from geowh.ingest.engine.plan import Plan, Rows
from geowh.ingest.sources.probes import Probe


def probe_for(plan: Plan, tokenizer) -> Probe:
    """The plan's probe texts tokenized by `tokenizer`, once per tokenizer (cached in the plan)."""
    from geowh.ingest.sources.probes import tokenize_probe, tokenizer_fingerprint

    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint not in plan.probes:
        c = plan.config
        plan.probes[fingerprint] = tokenize_probe(
            plan.texts, tokenizer, n=c.n, max_len=c.max_len, min_len=c.min_len, seed=c.seed,
            tokenizer_name=plan.series.tokenizer or tokenizer.name_or_path,
        )
    return plan.probes[fingerprint]


def geometry_rows(loaded, probe: Probe, plan: Plan, run_id: str, on_batch) -> tuple[Rows, dict[str, float]]:
    """Features of every (layer, pooling) streamed into covariances → spectra and metrics rows."""
    import numpy as np
    import torch

    from geowh.ingest.features.extract import extract_features, parse_layers, parse_poolings
    from geowh.ingest.features.spectrum import Covariance

    config = plan.config
    layers = parse_layers(config.layers, loaded.n_layers)
    poolings = parse_poolings(config.pooling)
    keys = [(layer, pooling) for layer in layers for pooling in poolings]
    d, m = loaded.d_model, len(probe)
    full = {k: Covariance(d) for k in keys}
    k_parts = config.subsets
    if k_parts and m // k_parts < MIN_SUBSET_ROWS:  # the probe had fewer usable documents than --n
        raise InputError(f"--subsets {k_parts}: the probe has {m} usable sequences, {m // k_parts} per part; a part "
                         f"needs at least {MIN_SUBSET_ROWS}: use fewer parts, or a probe with more documents")
    part_of = np.random.default_rng(config.seed).permutation(m) % k_parts if k_parts else None
    parts = {k: [Covariance(d) for _ in range(k_parts)] for k in keys} if k_parts else {}
    saved = {k: np.zeros((m, d), dtype=np.float32) for k in keys} if config.save_features else {}

    nll, predicted = 0.0, 0
    t = time.perf_counter()
    for batch in extract_features(
        loaded.base,
        probe.ids,
        pad_id=loaded.tokenizer.pad_token_id,
        layers=layers,
        poolings=poolings,
        device=loaded.device,
        batch_size=config.batch_size,
        head=loaded.model.get_output_embeddings() if config.loss else None,
        on_batch=on_batch,
    ):
        indices = batch.indices
        nll, predicted = nll + batch.nll, predicted + batch.predicted
        for key, f in batch.features.items():  # f: (batch, d) on the device
            full[key].update(f)
            if k_parts:
                which = part_of[indices]
                for j in range(k_parts):
                    rows = np.flatnonzero(which == j)
                    if rows.size:
                        parts[key][j].update(f[torch.as_tensor(rows, device=f.device)])
            if saved:
                saved[key][indices] = f.float().cpu().numpy()
    seconds = {"forward": time.perf_counter() - t}

    t = time.perf_counter()
    rows: Rows = {"spectra": [], "metrics": []}
    ref = loaded.ref
    where = {"model": ref.model, "checkpoint": ref.label, "probe": probe.id}
    for key in keys:
        layer, pooling = key
        lam = full[key].eigenvalues()
        rows["spectra"].append(
            where | {"layer": layer, "pooling": pooling, "n_samples": full[key].n, "d": d,
                     "eigenvalues": lam.tolist(), "run_id": run_id}
        )
        for row in metric_rows(lam, [p.eigenvalues() for p in parts.get(key, [])]):
            rows["metrics"].append(row | where | {"layer": layer, "pooling": pooling, "run_id": run_id})
    if config.loss:
        rows["metrics"].append(where | {
            "layer": None, "pooling": None, "metric": "probe_loss", "value": nll / max(predicted, 1),
            "stderr": None, "params": {"unit": "nats/token", "predicted_tokens": predicted}, "run_id": run_id,
        })
    if saved:
        folder = Path(config.save_features) / ref.model.replace("/", "--") / ref.label
        folder.mkdir(parents=True, exist_ok=True)
        for (layer, pooling), matrix in saved.items():
            np.save(folder / f"layer{layer}-{pooling}.npy", matrix)
    seconds["metrics"] = time.perf_counter() - t
    return rows, seconds


def metric_rows(lam, subset_spectra: list) -> list[dict]:
    """Metric rows of a spectrum; with subsets, value = mean over subsets and stderr = its standard error."""
    import math

    import numpy as np

    from geowh.spectrum_math import compute_metrics

    values = compute_metrics(lam)
    if not subset_spectra:
        return [{"metric": v.metric, "value": v.value, "stderr": None, "params": v.params} for v in values]
    per_part = [compute_metrics(s) for s in subset_spectra]
    rows = []
    for i, v in enumerate(values):
        xs = np.array([part[i].value for part in per_part])
        k = len(xs)
        rows.append({
            "metric": v.metric,
            "value": float(xs.mean()),
            "stderr": float(xs.std(ddof=1) / math.sqrt(k)),
            "params": v.params | {"subsets": k, "full_probe": v.value, "subset_values": xs.tolist()},
        })
    return rows
