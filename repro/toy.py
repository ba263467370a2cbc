"""The mechanistic toy model of the paper's §3.3 (METHOD.md §7), as ordinary warehouse series.

N samples with orthonormal inputs (one-hot x, so the features f = θx are the columns of θ,
free "unconstrained features"), a classifier W ∈ R^{|V|×d}, full-batch gradient descent from a
small initialisation. Each sample has its own class c (drawn with Zipf frequencies p_c ∝ c^−skew)
and a next-token distribution q = (1−ε)·e_c + ε·p: with probability ε = `label_noise` its label
is a fresh draw from the global Zipf frequencies, as a language context only partly predicts
the next token. The loss is the expectation over those labels (cross-entropy, or squared error
for the MSE control), so the class frequencies seen in training are exactly Zipf.

At each checkpoint of a Pythia-like grid (half powers of two, then evenly spaced) the
covariance spectrum of the features across samples is computed with geowh's spectrum module
and written as model `toy` (and the controls `toy-uniform`, `toy-no-bottleneck`, `toy-mse`),
probe `toy-samples-<hash>`, layer 1, pooling `none`.

docs/toy.md has the configuration search and the measured trajectories. With the defaults the
main series shows warmup (RankMe 3 → 1), entropy-seeking (→ 2.7) and compression-seeking
(→ 2.3, σ₁ and σ₂ growing ×4 while σ₃ stalls); the controls saturate instead.

    rows = run_toy(ToyConfig())                 # {table: rows} for Warehouse.write
    summaries = write_toy(Warehouse("w.duckdb"))  # main series and controls
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from geowh.errors import InputError
from geowh.progress import Event, Progress, silent
from geowh.warehouse import Warehouse, as_warehouse
from geowh.warehouse.runs import config_key, run_row

KIND = "toy"
MODEL = "toy"
LAYER = 1  # the one hidden layer f = θx (layer 0 would be the one-hot input)
POOLING = "none"  # one feature vector per sample: nothing to pool
SIGMAS = 4  # top covariance eigenvalues stored as metrics sigma_1 … sigma_4
LATE_FALL = 0.05  # "fell late": final RankMe ≥ 5 % below its maximum after the warmup minimum
LOSSES = ("ce", "mse")
INITS = ("balanced", "random")

# The negative controls (METHOD.md §7): each changes one condition of the main run.
CONTROLS: dict[str, Callable[[ToyConfig], ToyConfig]] = {
    "toy-uniform": lambda c: replace(c, skew=0.0),
    "toy-no-bottleneck": lambda c: replace(c, d=c.classes),
    "toy-mse": lambda c: replace(c, loss="mse"),
}


@dataclass(frozen=True)
class ToyConfig:
    """Every setting of a toy run; stored as `runs.config`. Defaults reproduce the three phases."""

    d: int = 3
    """Feature width (the bottleneck when d < classes)."""
    classes: int = 32
    """Number of classes |V|."""
    samples: int = 300
    """Number of samples N (orthonormal inputs, one feature vector each)."""
    skew: float = 1.0
    """Zipf exponent of the class frequencies p_c ∝ c^−skew (0 = uniform)."""
    label_noise: float = 0.8
    """ε: share of a sample's labels drawn from the global Zipf frequencies instead of its own class."""
    loss: str = "ce"
    """ce (softmax cross-entropy) or mse (squared error on the same targets)."""
    init: str = "balanced"
    """balanced (θθᵀ = WᵀW, all singular values init_scale) or random (Gaussian entries)."""
    init_scale: float = 3e-3
    """Balanced: each singular value of W and θ. Random: entries of std init_scale/√rows."""
    lr: float = 4.0
    """Learning rate of plain full-batch gradient descent (the loss is a mean over samples)."""
    steps: int = 5_000
    """Gradient steps."""
    seed: int = 0
    """Seed of the labels and the initialisation."""

    def check(self) -> None:
        if self.d < 1 or self.classes < 2 or self.samples < 2:
            raise InputError(f"the toy needs d ≥ 1, classes ≥ 2 and samples ≥ 2; got d={self.d}, "
                             f"classes={self.classes}, samples={self.samples}")
        if self.init == "balanced" and self.d > min(self.classes, self.samples):
            raise InputError(f"a balanced init needs d ≤ classes and d ≤ samples (got d={self.d}): d = classes "
                             "already removes the bottleneck; or pass --init random")
        if not 0.0 <= self.label_noise <= 1.0:
            raise InputError(f"label noise is a probability in [0, 1], got {self.label_noise}")
        if self.skew < 0:
            raise InputError(f"skew is a Zipf exponent ≥ 0 (0 = uniform), got {self.skew}")
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.init not in INITS:
            raise InputError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        # `not x > 0` also refuses NaN, which every comparison calls false.
        if not 0 < self.lr < math.inf or not 0 < self.init_scale < math.inf or self.steps < 1:
            raise InputError(f"lr and init_scale must be positive and steps ≥ 1; got lr={self.lr}, "
                             f"init_scale={self.init_scale}, steps={self.steps}")

    @property
    def key(self) -> str:
        """Hash of the config (runs.config_key)."""
        return config_key(asdict(self))


@dataclass
class Trajectory:
    """What one training run recorded at each checkpoint step."""

    steps: list[int]
    spectra: list[np.ndarray]  # covariance eigenvalues of the (N, d) features, largest first
    losses: list[float]
    targets_hash: str  # sha256 of the (|V|, N) target matrix: the probe's content hash
    seconds: float


def schedule(steps: int) -> list[int]:
    """Checkpoint steps like Pythia's grid: 0, half powers of two (1, 2, 3, 4, 6, 8, 11, …) up to
    steps/8, then every steps/40 up to `steps`."""
    log_part = {int(round(2 ** (k / 2))) for k in range(0, 2 * int(np.log2(max(steps, 1))) + 2)}
    every = max(steps // 40, 1)
    grid = {0, steps} | {s for s in log_part if s <= steps / 8} | set(range(every, steps + 1, every))
    return sorted(grid)


def zipf(classes: int, skew: float) -> np.ndarray:
    """Class frequencies p_c ∝ c^−skew, c = 1 … classes (skew 0: uniform)."""
    p = np.arange(1, classes + 1, dtype=np.float64) ** -skew
    return p / p.sum()


def targets(config: ToyConfig, rng: np.random.Generator) -> np.ndarray:
    """(|V|, N) expected label distribution of each sample: (1−ε)·onehot(own class) + ε·p."""
    p = zipf(config.classes, config.skew)
    own = rng.choice(config.classes, size=config.samples, p=p)
    q = np.zeros((config.classes, config.samples))
    q[own, np.arange(config.samples)] = 1.0
    return (1.0 - config.label_noise) * q + config.label_noise * p[:, None]


def initial_weights(config: ToyConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(W (|V|, d), θ (d, N)) at a small initialisation."""
    v, n, d, s = config.classes, config.samples, config.d, config.init_scale
    if config.init == "random":
        return rng.normal(0, s / np.sqrt(v), (v, d)), rng.normal(0, s / np.sqrt(n), (d, n))
    # Balanced (Appendix B): W = U·s·R and θ = Rᵀ·s·Qᵀ give WᵀW = θθᵀ = s²I with random
    # orthonormal U (|V|, d), Q (N, d) and rotation R, so every direction starts equal.
    u = np.linalg.qr(rng.standard_normal((v, d)))[0]
    q = np.linalg.qr(rng.standard_normal((n, d)))[0]
    r = np.linalg.qr(rng.standard_normal((d, d)))[0]
    return s * u @ r, s * r.T @ q.T


def train(config: ToyConfig) -> Trajectory:
    """Train the toy by full-batch gradient descent; the feature spectrum at each checkpoint step."""
    from geowh.ingest.features.spectrum import Covariance

    config.check()
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    q = targets(config, rng)  # (V, N)
    w, theta = initial_weights(config, rng)  # (V, d), (d, N)
    n = config.samples
    record = set(schedule(config.steps))
    steps, spectra, losses = [], [], []
    for step in range(config.steps + 1):
        z = w @ theta  # (V, N) logits
        if config.loss == "ce":
            z = z - z.max(axis=0)
            log_p = z - np.log(np.exp(z).sum(axis=0))
            grad = (np.exp(log_p) - q) / n  # ∂loss/∂z, loss = mean over samples
        else:
            grad = (z - q) / n
        if step in record:
            loss = -(q * log_p).sum() / n if config.loss == "ce" else 0.5 * (grad * grad).sum() * n
            steps.append(step)
            try:
                spectra.append(Covariance(config.d).update(theta.T).eigenvalues())
            except InputError:  # NaN or overflowing weights: the training, not the features' dtype, is at fault
                raise InputError(f"the toy diverged before step {step} (its weights overflowed): lower --lr "
                                 f"(now {config.lr:g}) or --init-scale (now {config.init_scale:g})") from None
            losses.append(float(loss))
        if step == config.steps:
            break
        # Simultaneous update of both layers (the gradients at the same point).
        w, theta = w - config.lr * grad @ theta.T, theta - config.lr * w.T @ grad
    return Trajectory(steps, spectra, losses, hashlib.sha256(q.tobytes()).hexdigest(),
                      time.perf_counter() - started)


def series(config: ToyConfig = ToyConfig(), controls: bool = True) -> dict[str, ToyConfig]:
    """The series `geowh toy` writes: model name → config (main run first)."""
    out = {MODEL: config}
    if controls:
        out.update({name: change(config) for name, change in CONTROLS.items()})
    return out


def run_toy(config: ToyConfig = ToyConfig(), model: str = MODEL) -> dict[str, list[dict]]:
    """Train one toy series; its rows for Warehouse.write: models, probes, checkpoints, runs,
    spectra, metrics (RankMe and the other registered metrics, sigma_k, loss)."""
    from geowh.spectrum_math import compute_metrics, definitions, definitions_fingerprint
    from geowh.warehouse import utcnow

    started_at = utcnow()
    traj = train(config)
    t = time.perf_counter()
    run_id = str(uuid.uuid4())
    probe = f"toy-samples-{traj.targets_hash[:12]}"
    where = {"model": model, "probe": probe, "layer": LAYER, "pooling": POOLING, "run_id": run_id}
    checkpoints, spectra, metrics = [], [], []
    for step, lam, loss in zip(traj.steps, traj.spectra, traj.losses):
        label = f"step{step}"
        checkpoints.append({"model": model, "checkpoint": label, "step": step, "tokens": float(step * config.samples),
                            "stage": "pretrain", "stage_order": 0, "source": f"geowh-toy:{config.key}"})
        at = where | {"checkpoint": label}
        spectra.append(at | {"n_samples": config.samples, "d": config.d, "eigenvalues": lam.tolist()})
        # αReQ's usual ranks 12..100 do not exist in d = 3: it is fitted over all d ranks (params say so).
        for v in compute_metrics(lam, fit_start=1, fit_end=max(config.d, 3)):
            metrics.append(at | {"metric": v.metric, "value": v.value, "stderr": None, "params": v.params})
        for k in range(min(SIGMAS, config.d)):
            metrics.append(at | {"metric": f"sigma_{k + 1}", "value": float(lam[k]) if k < lam.size else 0.0,
                                 "stderr": None, "params": {"what": f"eigenvalue {k + 1} of the feature covariance"}})
        metrics.append(at | {"metric": "loss", "value": loss, "stderr": None,
                             "params": {"what": f"training loss ({config.loss}, mean over samples)"}})
    return {
        "models": [{"model": model, "family": "toy", "parameters": config.d * (config.samples + config.classes),
                    "layers": 1, "d_model": config.d, "vocab_size": config.classes}],
        "probes": [{"probe": probe, "name": "toy-samples", "dataset": "geowh toy (synthetic)",
                    "sequences": config.samples, "seed": config.seed, "content_hash": traj.targets_hash}],
        "checkpoints": checkpoints,
        "runs": [run_row(run_id, KIND, model, "ok", packages=("numpy_version",), checkpoint=None,
                         probe=probe, config_key=config.key, config=asdict(config) | {"definitions": definitions()},
                         definitions=definitions_fingerprint(), device="cpu", dtype="float64",
                         started_at=started_at, finished_at=utcnow(),
                         stage_seconds={"train": round(traj.seconds, 3), "metrics": round(time.perf_counter() - t, 3)})],
        "spectra": spectra,
        "metrics": metrics,
    }


def summarize(rows: dict[str, list[dict]]) -> dict[str, Any]:
    """RankMe at start, minimum, maximum after the minimum, and end of one series' rows, and
    whether it fell late (end ≥ LATE_FALL below that maximum). Raw values, no smoothing."""
    by_step = {c["checkpoint"]: c["step"] for c in rows["checkpoints"]}
    points = sorted((by_step[m["checkpoint"]], m["value"]) for m in rows["metrics"] if m["metric"] == "rankme")
    steps = [s for s, _ in points]
    r = np.array([v for _, v in points])
    lo = int(np.argmin(r))
    hi = lo + int(np.argmax(r[lo:]))
    fall = float((r[hi] - r[-1]) / r[hi])
    return {
        "model": rows["models"][0]["model"],
        "start": float(r[0]),
        "min": float(r[lo]), "min_step": steps[lo],
        "max": float(r[hi]), "max_step": steps[hi],
        "end": float(r[-1]),
        "late_fall": fall,
        "fell_late": fall >= LATE_FALL,
        "checkpoints": len(steps),
        "config": rows["runs"][0]["config"],
    }


def write_toy(wh: str | Path | Warehouse, config: ToyConfig = ToyConfig(), controls: bool = True,
              progress: Progress = silent) -> list[dict[str, Any]]:
    """Train and write the main toy series and (by default) its controls; one summary each.

    Each series is written in one transaction that first removes the series' old rows, so a
    rerun leaves no checkpoint or metric row that it did not produce (another --steps, another d).
    `progress` hears an `info` line as each series starts training.
    """
    wh = as_warehouse(wh)
    out = []
    for model, cfg in series(config, controls).items():
        progress(Event("info", f"training {model} …"))
        rows = run_toy(cfg, model)
        wh.write(rows, before=[(f"DELETE FROM {table} WHERE model = ?", [model])
                               for table in ("metrics", "spectra", "checkpoints")])
        out.append(summarize(rows))
    return out
