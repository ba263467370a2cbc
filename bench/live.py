"""Cost of live geometry: one probe pass (`GeometryProbe.measure`) as a fraction of a training step.

Two model shapes, random weights (speed does not depend on them):

- demo: `geowh train-mini`'s defaults (GPT-NeoX, 4 layers, d 128, 4 heads, BPE vocabulary
  8,000, batch 16 × 128 tokens), with the probe train-mini measures at each checkpoint
  (256 sequences × 128 tokens) and GeometryCallback's default probe (1,000 × 512);
- pythia-410m: 24 layers, d 1,024, 16 heads, vocabulary 50,304 (Pythia's tokenizer), batch
  16 × 512, probe 1,000 × 512 (GeometryCallback's defaults).

A training step is train-mini's (`_train_step`: forward, cross-entropy, backward, gradient
clipping, AdamW; bf16 autocast on CUDA). The probe pass is the real path: tokenized probe
→ batched forward → covariance → eigenvalues → metrics. Every probe text is longer than
512 tokens, so every probe sequence has the full length.

Where the full sizes are too slow (the 410M shape on a CPU), both are timed smaller and
scaled: the step at batch b, minus the optimizer update (timed alone), is forward + backward
for b sequences, so step(16) = optimizer + 16/b × (step(b) − optimizer); the probe pass on n
sequences scales by N/n to the probe's N sequences (all of the same length, in the same
batches; the eigendecomposition, a fixed cost, is scaled too, which overstates the pass a
little). Timings are medians of `--repeats` after one warm-up.

    python bench/live.py                          # both shapes, sizes fitting the device
    python bench/live.py --shape demo --device cpu --threads 1
    python bench/live.py --shape pythia-410m --train-batch 1 --probe-n 4 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b"

SHAPES = {
    "demo": dict(layers=4, d_model=128, heads=4, vocab=8000, batch=16, seq=128, probes=((256, 128), (1000, 512))),
    "pythia-410m": dict(layers=24, d_model=1024, heads=16, vocab=50304, batch=16, seq=512, probes=((1000, 512),)),
}


def long_texts(count: int, chars: int = 6000) -> list[str]:
    """`count` texts of English (stdlib docstrings), each well over 512 tokens."""
    import importlib

    pieces: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name.startswith(("_", "test", "idlelib", "tkinter", "turtle", "antigravity", "this")):
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # not importable here: no docs from it
                continue
            for obj in [module] + [getattr(module, a, None) for a in dir(module) if not a.startswith("_")]:
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str) and len(doc) > 200:
                    pieces.append(" ".join(doc.split()))
            if sum(map(len, pieces)) > count * chars * 1.2:
                break
    text = " ".join(dict.fromkeys(pieces))
    return [text[i * chars : (i + 1) * chars] for i in range(min(count, len(text) // chars))]


def tokenizer_for(shape: dict, texts: list[str]):
    from transformers import AutoTokenizer

    if shape["vocab"] >= 50000:
        return AutoTokenizer.from_pretrained(TOKENIZER)
    from geowh.repro.train import TrainConfig, build_tokenizer

    return build_tokenizer(texts, TrainConfig(vocab=shape["vocab"]))  # as train-mini makes one


class _Vocab:
    """What `build_model` reads from a tokenizer: its size and special ids."""

    def __init__(self, size: int):
        self.size, self.bos_token_id, self.eos_token_id = size, 0, 0

    def __len__(self) -> int:
        return self.size


def step_seconds(model, config, batch: int, seq: int, dev, repeats: int) -> tuple[float, float]:
    """Median seconds of train-mini's training step at `batch` × `seq` random tokens, and of its optimizer update alone."""
    import numpy as np
    import torch

    from geowh.repro.train import _optimizer, _train_step

    optimizer = _optimizer(model, config)
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size

    def one() -> float:
        tokens = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int64)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        _train_step(model, optimizer, tokens, config, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t

    def update() -> float:  # the step's AdamW update again, on the gradients the last step left
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t

    one()  # allocations, optimizer state
    steps = sorted(one() for _ in range(repeats))
    updates = sorted(update() for _ in range(repeats))
    return steps[len(steps) // 2], updates[len(updates) // 2]


def probe_seconds(model, tokenizer, probe_file: Path, n: int, max_len: int, repeats: int) -> float:
    """Median seconds of `GeometryProbe.measure` on `n` sequences of `max_len` tokens (tokenizing excluded)."""
    import torch

    from geowh.integrations import GeometryProbe

    probe = GeometryProbe(tokenizer, probe_file, n=n, max_len=max_len, name="bench")
    assert all(len(s) == max_len for s in probe.probe.ids), "every probe text must exceed max_len tokens"
    dev = next(model.parameters()).device
    times = []
    for i in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        probe.measure(model, i)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t)
    times = sorted(times[1:])  # the first pass warms kernels and allocations
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-batch", type=int, help="batch to time the step at (default: 16 for demo or GPU, 1 else)")
    parser.add_argument("--probe-n", type=int, help="probe sequences to time (default: the real n for demo or GPU, 4 else)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from geowh.ingest.sources.models import device_name, resolve_device
    from geowh.repro.train import TrainConfig, build_model

    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        texts = long_texts(1100)
        probe_file = Path(tmp) / "probe.txt"
        probe_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
        for name, shape in SHAPES.items():
            if args.shape not in ("all", name):
                continue
            small = name != "demo" and dev.type == "cpu"
            batch = args.train_batch or (1 if small else shape["batch"])
            config = TrainConfig(layers=shape["layers"], d_model=shape["d_model"], heads=shape["heads"],
                                 batch_size=shape["batch"], seq_len=shape["seq"])
            tokenizer = tokenizer_for(shape, texts)
            model = build_model(config, _Vocab(shape["vocab"])).to(dev).train()
            timed, update = step_seconds(model, config, batch, shape["seq"], dev, args.repeats)
            step = update + shape["batch"] / batch * (timed - update)
            for n, max_len in shape["probes"]:
                k = min(n, args.probe_n or (4 if small else n))
                timed_probe = probe_seconds(model, tokenizer, probe_file, k, max_len, args.repeats)
                probe = timed_probe * n / k
                row = {
                    "shape": name, "device": device_name(dev), "threads": torch.get_num_threads(),
                    "train_batch": f"{shape['batch']}x{shape['seq']}", "step_s": round(step, 3),
                    "step_timed": {"batch": batch, "step_s": round(timed, 3), "optimizer_s": round(update, 3)},
                    "probe": f"{n}x{max_len}", "probe_s": round(probe, 3),
                    "probe_timed": {"n": k, "seconds": round(timed_probe, 3)},
                    "probe_per_step": round(probe / step, 2),
                    "overhead_every_1000_steps": f"{100 * probe / step / 1000:.2f}%",
                }
                print(json.dumps(row), flush=True)
            del model


if __name__ == "__main__":
    main()
