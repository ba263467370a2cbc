"""Feature extraction: geowh's batched path vs the authors' one-sequence-at-a-time method.

One checkpoint of a GPT-NeoX of Pythia-410M's shape by default (24 layers, d = 1024, 16 heads,
the Pythia tokenizer's 50k vocabulary, random weights: speed does not depend on them; --layers,
--d and --heads make it smaller) over N probe sequences of ≤ 512 tokens of real English (the
standard library's documentation, rendered by pydoc; no network).

- geowh: `tokenize_probe` → `extract_features` (length-sorted, padded batches of ~2**19
  residual-stream elements on a CPU, base model,
  `--dtype`, default auto: bf16 on a GPU or a CPU with native bf16 units, else fp32) →
  streaming `Covariance` → eigenvalues → metrics. When auto is not fp32, geowh's fp32 path
  (`--dtype float32`, the authors' exact numbers) runs too, in the same rounds.
- authors: for each text, tokenize, one forward through the full causal LM with its head
  replaced by the identity (fp32), take the last position; stack; PCA by full SVD → metrics.

The process reuses freed memory as `geowh ingest` does (`geowh.allocator`; `--system-malloc`
keeps glibc's defaults), for both methods. All are timed from the texts to the metrics, in interleaved rounds (a shared machine then
slows all alike). Prints the load average, tokens/s (and CPU seconds) of each and the ratios,
RankMe and αReQ of each, and the achieved FLOP rate against this machine's matrix-multiply
peak in the same dtype, measured first in the same process (`bench/peak.py`), and on CUDA
also against the GPU's data-sheet bf16 peak.

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
    """Texts → tokens → batched features → streamed into `cov`; returns (tokens, seconds, cov, lengths, cpu seconds)."""
    from geowh.ingest.features.extract import extract_features
    from geowh.ingest.features.spectrum import Covariance
    from geowh.ingest.sources.probes import ProbeTexts, tokenize_probe

    base = model.base_model
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    probe = tokenize_probe(ProbeTexts("bench", "pydoc", None, None, tuple(texts)), tokenizer,
                           n=len(texts), max_len=max_len, min_len=0)
    cov = cov if cov is not None else Covariance(base.config.hidden_size)
    layer = base.config.num_hidden_layers
    for batch in extract_features(base, probe.ids, pad_id=tokenizer.pad_token_id, layers=[layer], device=device):
        cov.update(batch.features[(layer, "last")])
    sync(device)
    return probe.tokens, time.perf_counter() - start, cov, [len(s) for s in probe.ids], time.process_time() - cpu


def run_authors(model, tokenizer, texts, device, max_len):
    """As the authors' scripts: per text, tokenize, forward the LM (head = identity), keep the last position."""
    import torch

    head = model.get_output_embeddings()
    model.set_output_embeddings(torch.nn.Identity())
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
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
    return tokens, seconds, rows, time.process_time() - cpu


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
    parser.add_argument("--dtype", default="auto", help="geowh's dtype: auto (default), float32, bfloat16")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of both methods")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    parser.add_argument("--layers", type=int, default=24, help="model layers (Pythia-410M: 24)")
    parser.add_argument("--d", type=int, default=1024, help="model width (Pythia-410M: 1024)")
    parser.add_argument("--heads", type=int, default=16, help="attention heads (Pythia-410M: 16)")
    parser.add_argument("--no-authors", action="store_true", help="skip the one-at-a-time baseline (slow at full size)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's malloc defaults instead of geowh.allocator's (which `geowh ingest` sets)")
    args = parser.parse_args()

    from geowh.allocator import reuse_freed_memory

    # As `geowh ingest` runs; the authors' loop, in the same process, gets the same allocator.
    reused = False if args.system_malloc else reuse_freed_memory()

    import torch
    from transformers import AutoTokenizer

    from geowh.ingest.sources.models import device_name, resolve_device, resolve_dtype
    from geowh.spectrum_math import compute_metrics, metrics_dict

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peak import BF16_PEAK_TFLOPS, measure, peak_for

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    calibration = measure(seconds=1.0)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    texts = english_texts(args.n)
    model = random_model(device, 50304, args.layers, args.d, args.heads)
    # geowh runs the same weights in its dtype (auto: bf16 on a capable GPU or CPU), and in
    # fp32 beside it when that differs.
    paths = {str(resolve_dtype(args.dtype, device)).removeprefix("torch."): None}
    paths.setdefault("float32", None)
    for name in paths:
        paths[name] = copy.deepcopy(model).to(getattr(torch, name))
    print(f"device {device_name(device)}, torch threads {torch.get_num_threads()}, {len(texts)} texts, "
          f"max_len {args.max_len}, model {args.layers} layers x d {args.d} ({args.heads} heads), "
          f"freed memory {'reused (geowh.allocator)' if reused else 'returned to the kernel (glibc defaults)'}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"matmul peak here: fp32 {calibration['cpu_float32']:.1f}, bf16 {calibration['cpu_bfloat16']:.1f} GFLOP/s (CPU)"
          + (f", bf16 {calibration['cuda_bfloat16'] / 1000:.1f} TFLOP/s (GPU)" if "cuda_bfloat16" in calibration else "")
          + f"; load average {calibration['load']}")

    # Warm every path up (allocators, kernels) on a few texts.
    for m in paths.values():
        run_geowh(m, tokenizer, texts[:32], device, args.max_len)
    if not args.no_authors:
        run_authors(model, tokenizer, texts[:8], device, args.max_len)

    # Interleaved rounds: a machine shared with other work slows every method alike.
    timed = {name: {"tokens": 0, "seconds": 0.0, "cpu": 0.0, "cov": None, "lengths": []} for name in paths}
    authors = {"tokens": 0, "seconds": 0.0, "cpu": 0.0, "rows": []}
    for part in np.array_split(np.arange(len(texts)), args.rounds):
        chunk = [texts[i] for i in part]
        for name, m in paths.items():
            t, seconds, cov, lens, cpu = run_geowh(m, tokenizer, chunk, device, args.max_len, timed[name]["cov"])
            r = timed[name]
            r.update(tokens=r["tokens"] + t, seconds=r["seconds"] + seconds, cpu=r["cpu"] + cpu, cov=cov,
                     lengths=r["lengths"] + lens)
        if not args.no_authors:
            t, seconds, rows, cpu = run_authors(model, tokenizer, chunk, device, args.max_len)
            authors.update(tokens=authors["tokens"] + t, seconds=authors["seconds"] + seconds,
                           cpu=authors["cpu"] + cpu, rows=authors["rows"] + rows)
    for r in timed.values():
        start = time.perf_counter()
        r["values"] = metrics_dict(compute_metrics(r["cov"].eigenvalues()))
        r["seconds"] += time.perf_counter() - start
    if not args.no_authors:
        start = time.perf_counter()
        authors["values"] = metrics_dict(compute_metrics(authors_spectrum(authors["rows"])))
        authors["seconds"] += time.perf_counter() - start
        assert authors["tokens"] == timed["float32"]["tokens"], (authors["tokens"], timed["float32"]["tokens"])

    tokens = timed["float32"]["tokens"]
    flops = model_flops(model, timed["float32"]["lengths"])
    load = round(os.getloadavg()[0], 1)
    print(f"tokens: {tokens:,} (mean {tokens / len(texts):.0f} per sequence), {args.rounds} interleaved rounds, "
          f"{flops / tokens / 1e6:.2f} MFLOP per token")
    report = {"device": device_name(device), "n": len(texts), "tokens": tokens, "layers": args.layers, "d": args.d,
              "allocator": reused,
              "load_before": calibration["load"], "load": load, "peak_gflops": calibration}
    rows = [(f"geowh   ({name}, batched)", name, r) for name, r in timed.items()]
    if not args.no_authors:
        rows.append(("authors (float32, one by one)", "float32", authors))
    for label, dtype, r in rows:
        gflops = flops / r["seconds"] / 1e9
        peak = peak_for(calibration, device.type, dtype)
        share = f" = {100 * gflops / peak:4.1f}% of the {dtype} matmul peak" if peak else ""
        per_cpu = flops / r["cpu"] / 1e9
        peak_cpu = peak_for(calibration, device.type, dtype, per_cpu_second=True)
        if peak_cpu:  # what a loaded machine distorts least: other processes take wall time, not CPU time
            share += f"; {per_cpu:.1f} GFLOP per CPU second = {100 * per_cpu / peak_cpu:4.1f}% of that peak"
        print(f"{label:32s} {tokens / r['seconds']:12,.0f} tokens/s ({r['seconds']:.2f} s, {r['cpu']:.2f} CPU s); "
              f"{gflops:8.1f} GFLOP/s{share}")
        key = label.split()[0] + ("_" + dtype if label.startswith("geowh") else "")
        report[key] = {"tokens_per_s": round(tokens / r["seconds"]), "seconds": round(r["seconds"], 2),
                       "cpu_seconds": round(r["cpu"], 2), "gflops": round(gflops, 1),
                       "peak_share": round(gflops / peak, 3) if peak else None,
                       "peak_share_per_cpu_s": round(per_cpu / peak_cpu, 3) if peak_cpu else None}
    fast = next(iter(timed))
    if fast != "float32":
        print(f"geowh {fast} / geowh float32: {timed['float32']['seconds'] / timed[fast]['seconds']:.2f}x wall, "
              f"{timed['float32']['cpu'] / timed[fast]['cpu']:.2f}x CPU seconds")
        report["dtype_speedup_cpu_s"] = round(timed["float32"]["cpu"] / timed[fast]["cpu"], 2)
        report["dtype_speedup"] = round(timed["float32"]["seconds"] / timed[fast]["seconds"], 2)
    if not args.no_authors:
        print(f"ratio geowh ({fast}) / authors: {authors['seconds'] / timed[fast]['seconds']:.2f}x; "
              f"geowh float32 / authors: {authors['seconds'] / timed['float32']['seconds']:.2f}x")
        report["ratio"] = round(authors["seconds"] / timed[fast]["seconds"], 2)
        report["ratio_float32"] = round(authors["seconds"] / timed["float32"]["seconds"], 2)
    for name in ("rankme", "alpha_req"):
        values = "  ".join(f"geowh {k} {r['values'][name]:.6g}" for k, r in timed.items())
        print(f"  {name}: {values}" + (f"  authors {authors['values'][name]:.6g}" if not args.no_authors else ""))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        sheet = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        achieved = flops / timed[fast]["seconds"] / 1e12
        if sheet:
            print(f"geowh achieved {achieved:.1f} TFLOP/s = {100 * achieved / sheet:.1f}% of the {sheet:.0f} TFLOP/s "
                  "data-sheet dense bf16 peak")
            report["sheet_peak_share"] = round(achieved / sheet, 3)
    print(f"load average {calibration['load']} at the start, {load} at the end")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
