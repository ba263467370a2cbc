"""Feature extraction: geowh's batched path vs the authors' one-sequence-at-a-time method.

One checkpoint of a GPT-NeoX of Pythia-410M's shape by default (24 layers, d = 1024, 16 heads,
the Pythia tokenizer's 50k vocabulary, random weights: speed does not depend on them; --layers,
--d and --heads make it smaller) over N probe sequences of ≤ 512 tokens of real English (the
standard library's documentation, rendered by pydoc; no network).

- geowh: `tokenize_probe` → `extract_features` (length-sorted, padded batches, base model,
  dtype auto: bf16 on a GPU, fp32 on the CPU) → streaming `Covariance` → eigenvalues → metrics.
- authors: for each text, tokenize, one forward through the full causal LM with its head
  replaced by the identity (fp32), take the last position; stack; PCA by full SVD → metrics.

Both are timed from the texts to the metrics, in interleaved rounds (a shared machine then
slows both alike). Prints tokens/s of each and the ratio, checks
that both give the same RankMe and αReQ, and on CUDA the achieved TFLOP/s against the
GPU's dense bf16 peak.

    python bench/extract.py                 # N = 2000, Pythia-410M's shape, CPU or the first GPU
    python bench/extract.py --n 64 --layers 4 --d 256 --heads 4 --device cpu   # a CPU-sized run
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import pydoc
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizers" / "gpt-neox-20b"

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name substring.
BF16_PEAK = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "V100": 125.0,
}


def english_texts(count: int, seed: int = 0) -> list[str]:
    """`count` documents of pydoc text from stdlib modules, lengths spread like web pages (many > 512 tokens)."""
    paragraphs: list[str] = []
    names = sorted(sys.stdlib_module_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            if name.startswith(("_", "test", "idlelib", "tkinter", "turtle", "antigravity", "this")):
                continue
            try:
                text = pydoc.plain(pydoc.render_doc(importlib.import_module(name)))
            except Exception:  # a module that cannot be imported here has no docs to give
                continue
            paragraphs += [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(p.split()) > 5]
            if len(paragraphs) > count * 40:
                break
    rng = np.random.default_rng(seed)
    targets = rng.lognormal(mean=np.log(250), sigma=0.9, size=count)  # words per document
    docs, at = [], 0
    for target in targets:
        words: list[str] = []
        while len(words) < target:
            words += paragraphs[at % len(paragraphs)].split()
            at += 1
        docs.append(" ".join(words[: int(target) + 1]))
    return docs


def random_model(device, vocab: int, layers: int, d: int, heads: int):
    """A GPT-NeoX with random weights, Pythia's layout (MLP 4d, rotary on a quarter of each head), SDPA attention."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * d,
        max_position_embeddings=2048, rotary_pct=0.25, tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval().to(device)


def run_geowh(model, tokenizer, texts, device, max_len, cov=None):
    """Texts → tokens → batched features → streamed into `cov`; returns (tokens, seconds, cov, lengths)."""
    from geowh.ingest.features.extract import extract_features
    from geowh.ingest.sources.probes import ProbeTexts, tokenize_probe
    from geowh.ingest.features.spectrum import Covariance

    base = model.base_model
    sync(device)
    start = time.perf_counter()
    probe = tokenize_probe(ProbeTexts("bench", "pydoc", None, None, tuple(texts)), tokenizer,
                           n=len(texts), max_len=max_len, min_len=0)
    cov = cov if cov is not None else Covariance(base.config.hidden_size)
    layer = base.config.num_hidden_layers
    for batch in extract_features(base, probe.ids, pad_id=tokenizer.pad_token_id, layers=[layer], device=device):
        cov.update(batch.features[(layer, "last")])
    sync(device)
    return probe.tokens, time.perf_counter() - start, cov, [len(s) for s in probe.ids]


def run_authors(model, tokenizer, texts, device, max_len):
    """As the authors' scripts: per text, tokenize, forward the LM (head = identity), keep the last position."""
    import torch

    head = model.get_output_embeddings()
    model.set_output_embeddings(torch.nn.Identity())
    sync(device)
    start = time.perf_counter()
    rows, tokens = [], 0
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_len).to(device)
            out = model(**inputs)
            rows.append(out.logits[0, -1].float().cpu().numpy())
            tokens += inputs["input_ids"].shape[1]
    sync(device)
    seconds = time.perf_counter() - start
    model.set_output_embeddings(head)
    return tokens, seconds, rows


def authors_spectrum(rows) -> np.ndarray:
    """PCA by full SVD of the centred feature matrix: explained variances s² / (M − 1)."""
    f = np.stack(rows).astype(np.float64)
    s = np.linalg.svd(f - f.mean(0), compute_uv=False)
    return s**2 / (len(f) - 1)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops(model, lengths: list[int]) -> float:
    """Forward FLOPs: 2 per non-embedding parameter per token, plus QKᵀ and AV over the padded-free lengths."""
    c = model.config
    params = sum(p.numel() for n, p in model.base_model.named_parameters() if "embed" not in n)
    attention = sum(4 * c.num_hidden_layers * t * t * c.hidden_size for t in lengths)
    return 2.0 * params * sum(lengths) + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="probe sequences (default 2000)")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of both methods")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    parser.add_argument("--layers", type=int, default=24, help="model layers (Pythia-410M: 24)")
    parser.add_argument("--d", type=int, default=1024, help="model width (Pythia-410M: 1024)")
    parser.add_argument("--heads", type=int, default=16, help="attention heads (Pythia-410M: 16)")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from geowh.ingest.sources.models import device_name, resolve_device, resolve_dtype
    from geowh.spectrum_math import compute_metrics, metrics_dict

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    texts = english_texts(args.n)
    model = random_model(device, 50304, args.layers, args.d, args.heads)
    # geowh runs the same weights in its auto dtype (bf16 on a capable GPU, fp32 on the CPU).
    dtype = resolve_dtype("auto", device)
    model_fast = copy.deepcopy(model).to(dtype)
    dtype = str(dtype).removeprefix("torch.")
    print(f"device {device_name(device)}, torch threads {torch.get_num_threads()}, {len(texts)} texts, "
          f"max_len {args.max_len}, model {args.layers} layers x d {args.d} ({args.heads} heads), "
          f"load average {os.getloadavg()[0]:.1f}")

    # Warm both paths up (allocators, kernels) on a few texts.
    run_geowh(model_fast, tokenizer, texts[:32], device, args.max_len)
    run_authors(model, tokenizer, texts[:8], device, args.max_len)

    # Interleaved rounds: a machine shared with other work slows both methods alike.
    cov, rows, lengths = None, [], []
    tokens = tokens_a = 0
    fast = slow = 0.0
    for part in np.array_split(np.arange(len(texts)), args.rounds):
        chunk = [texts[i] for i in part]
        t, seconds, cov, lens = run_geowh(model_fast, tokenizer, chunk, device, args.max_len, cov)
        tokens, fast, lengths = tokens + t, fast + seconds, lengths + lens
        t, seconds, r = run_authors(model, tokenizer, chunk, device, args.max_len)
        tokens_a, slow, rows = tokens_a + t, slow + seconds, rows + r
    start = time.perf_counter()
    values = metrics_dict(compute_metrics(cov.eigenvalues()))
    fast += time.perf_counter() - start
    start = time.perf_counter()
    values_a = metrics_dict(compute_metrics(authors_spectrum(rows)))
    slow += time.perf_counter() - start

    assert tokens == tokens_a, (tokens, tokens_a)
    print(f"tokens: {tokens:,} (mean {tokens / len(texts):.0f} per sequence), {args.rounds} interleaved rounds")
    print(f"geowh   ({dtype:>8}, batched):   {tokens / fast:12,.0f} tokens/s  ({fast:.2f} s)")
    print(f"authors (float32, one by one): {tokens / slow:12,.0f} tokens/s  ({slow:.2f} s)")
    print(f"ratio: {slow / fast:.2f}x")
    for name in ("rankme", "alpha_req"):
        print(f"  {name}: geowh {values[name]:.6g}  authors {values_a[name]:.6g}")
    flops = model_flops(model, lengths)
    achieved = flops / fast / 1e12
    report = {"device": device_name(device), "n": len(texts), "tokens": tokens, "layers": args.layers, "d": args.d,
              "geowh_tokens_per_s": round(tokens / fast), "authors_tokens_per_s": round(tokens / slow),
              "ratio": round(slow / fast, 2), "geowh_tflops": round(achieved, 4), "dtype": dtype,
              "load": round(os.getloadavg()[0], 1)}
    line = f"geowh achieved {achieved:.3f} TFLOP/s; authors {flops / slow / 1e12:.3f} TFLOP/s"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        line += f" = {100 * achieved / peak:.1f}% of the {peak:.0f} TFLOP/s dense bf16 peak" if peak else " (peak unknown)"
        report["peak_share"] = round(achieved / peak, 3) if peak else None
    print(line + f"; load average {report['load']}")
    print(json.dumps(report))

if __name__ == "__main__":
    main()
