"""The geometry measurement: features of every (layer, pooling) → streaming covariances → spectra and metrics.

On by default (`IngestConfig.geometry`); its settings are the `IngestConfig` fields (probe, n,
max_len, layers, pooling, subsets, loss, …), so it adds no CLI option of its own. It writes
`spectra`, `metrics` and the `probes` row of the probe it tokenized.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geowh.errors import InputError
from geowh.ingest.config import MIN_SUBSET_ROWS, IngestConfig
from geowh.ingest.engine.plan import Measurement, Meter, Plan, Rows
from geowh.ingest.sources.probes import Probe, ProbeTexts
from geowh.ingest.sources.series import CheckpointRef

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from geowh.ingest.sources.models import Loaded
    from geowh.warehouse import Warehouse

NAME = "geometry"
OPTIONS = ()


def build(config: IngestConfig, options: Mapping[str, Any]) -> Geometry | None:
    return Geometry(config) if config.geometry else None


class Geometry(Measurement):
    """The probe texts of `config`, tokenized once per tokenizer, through every checkpoint.

    The texts are loaded when it is built (an unknown probe fails before anything is written);
    `config` (the measurement's, in the run's key) is the probe settings of `config` with the
    texts' name and hash in place of the path they were given by.
    """

    def __init__(self, config: IngestConfig, texts: ProbeTexts | None = None):
        from geowh.ingest.sources.probes import load_texts

        self.settings = config
        self.texts = texts if texts is not None else load_texts(config.probe, n=config.n)
        self.tokenizer_name: str | None = None
        self.probes: dict[str, Probe] = {}
        """Tokenized probes by tokenizer fingerprint (checkpoints of a series share one)."""
        # the dtype of the key is the resolved one (Plan.config_key); a file's name, not the path it
        # was given by: the texts hash says the rest
        keyed = {k: getattr(config, k) for k in IngestConfig.key_fields if k != "dtype"}
        super().__init__(NAME, None, keyed | {"probe": self.texts.name, "texts_hash": self.texts.texts_hash},
                         with_head=config.loss, probe=self.texts.name)

    def start(self, plan: Plan, wh: Warehouse | None) -> Rows:
        self.tokenizer_name = plan.series.tokenizer
        return {}

    def ready(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.probe_for(tokenizer)

    def probe_for(self, tokenizer: PreTrainedTokenizerBase) -> Probe:
        """The probe texts tokenized by `tokenizer`, once per tokenizer."""
        from geowh.ingest.sources.probes import tokenize_probe, tokenizer_fingerprint

        fingerprint = tokenizer_fingerprint(tokenizer)
        if fingerprint not in self.probes:
            c = self.settings
            self.probes[fingerprint] = tokenize_probe(
                self.texts, tokenizer, n=c.n, max_len=c.max_len, min_len=c.min_len, seed=c.seed,
                tokenizer_name=self.tokenizer_name or tokenizer.name_or_path,
            )
        return self.probes[fingerprint]

    def measure(self, loaded: Loaded, ref: CheckpointRef, config: IngestConfig, meter: Meter) -> Rows:
        t = time.perf_counter()
        probe = self.probe_for(loaded.tokenizer)
        meter.seconds["tokenize"] = time.perf_counter() - t
        rows = geometry_rows(loaded, probe, self.settings, meter)
        meter.tokens += probe.tokens
        return rows | {"probes": [probe.row]}


def geometry_rows(loaded: Loaded, probe: Probe, config: IngestConfig, meter: Meter) -> Rows:
    """Features of every (layer, pooling) streamed into covariances → spectra and metrics rows."""
    import numpy as np
    import torch

    from geowh.ingest.features.extract import extract_features, parse_layers, parse_poolings
    from geowh.ingest.features.spectrum import Covariance

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
        progress=meter.progress,
    ):
        indices = batch.indices
        nll, predicted = nll + batch.nll, predicted + batch.predicted
        for key, f in batch.features.items():  # f: (batch, d) on the device
            full[key].update(f)
            if k_parts:
                assert part_of is not None
                which = part_of[indices]
                for j in range(k_parts):
                    members = np.flatnonzero(which == j)
                    if members.size:
                        parts[key][j].update(f[torch.as_tensor(members, device=f.device)])
            if saved:
                saved[key][indices] = f.float().cpu().numpy()
    meter.seconds["forward"] = time.perf_counter() - t

    t = time.perf_counter()
    rows: Rows = {"spectra": [], "metrics": []}
    ref = loaded.ref
    where = {"model": ref.model, "checkpoint": ref.label, "probe": probe.id}
    for key in keys:
        layer, pooling = key
        lam = full[key].eigenvalues()
        rows["spectra"].append(
            where | {"layer": layer, "pooling": pooling, "n_samples": full[key].n, "d": d,
                     "eigenvalues": lam.tolist()}
        )
        for row in metric_rows(lam, [p.eigenvalues() for p in parts.get(key, [])]):
            rows["metrics"].append(row | where | {"layer": layer, "pooling": pooling})
    if config.loss:
        rows["metrics"].append(where | {
            "layer": None, "pooling": None, "metric": "probe_loss", "value": nll / max(predicted, 1),
            "stderr": None, "params": {"unit": "nats/token", "predicted_tokens": predicted},
        })
    if saved:
        assert config.save_features is not None
        folder = Path(config.save_features) / ref.model.replace("/", "--") / ref.label
        folder.mkdir(parents=True, exist_ok=True)
        for (layer, pooling), matrix in saved.items():
            np.save(folder / f"layer{layer}-{pooling}.npy", matrix)
    meter.seconds["metrics"] = time.perf_counter() - t
    return rows


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
