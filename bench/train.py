"""train-mini's step in fp32 and in bf16 autocast, side by side: speed, and what it does to the loss.

Two copies of one initialised model (train-mini's GPT-NeoX, its optimizer and schedule) train
on the same batches of a train-mini run's tokens, one step of each in turn (a shared machine
then slows both alike). Prints the load average, steps/s and CPU seconds per step of each,
the achieved GFLOP/s against this machine's matrix-multiply peak in the same dtype
(`bench/peak.py`, measured first in the same process), and how far the two loss curves are
apart (mean and largest |Δ loss| over the last quarter of the steps, and the held-out loss
of each at the end).

    geowh train-mini runs/mini --steps 10                    # any run: its tokens and tokenizer
    python bench/train.py runs/mini --steps 200 --layers 2 --d-model 32 --batch-size 32
    python bench/train.py runs/mini --steps 200 --system-malloc    # glibc's defaults: the allocator's share
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np


def step_flops(config, vocab: int) -> float:
    """Training FLOPs of one step: 6 per parameter (embeddings' lookup aside, the head counted) per token, plus attention."""
    d, layers, tokens = config.d_model, config.layers, config.batch_size * config.seq_len
    body = layers * 12 * d * d + vocab * d  # attention + MLP matrices, and the LM head
    attention = layers * 2 * config.seq_len * d  # QKᵀ and AV per token (causal: half of 4·seq·d)
    return 6.0 * tokens * (body + attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a train-mini folder (its tokens.npy, tokenizer/ and probe.txt are used)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's malloc defaults (what train-mini did before geowh.allocator)")
    args = parser.parse_args()

    from geowh.allocator import reuse_freed_memory

    reused = False if args.system_malloc else reuse_freed_memory()

    import copy

    import torch

    from geowh.repro import train as T

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peak import measure, peak_for

    if args.threads:
        torch.set_num_threads(args.threads)
    calibration = measure(seconds=1.0)
    out = Path(args.run)
    tokenizer = T._load_tokenizer(out / "tokenizer")
    tokens = np.load(out / "tokens.npy", mmap_mode="r")
    config = T.TrainConfig(layers=args.layers, d_model=args.d_model, batch_size=args.batch_size, seq_len=args.seq_len,
                           lr=args.lr, vocab=len(tokenizer))
    eval_batch = T._eval_batch(out / "probe.txt", tokenizer, config)
    dev = torch.device("cpu")
    model = T.build_model(config, tokenizer).to(dev).train()
    runs = {}
    for dtype in ("float32", "bfloat16"):
        m = copy.deepcopy(model)
        runs[dtype] = {"model": m, "opt": T._optimizer(m, config), "losses": [], "wall": 0.0, "cpu": 0.0}
    print(f"{args.layers} layers x d {args.d_model}, vocabulary {len(tokenizer)}, batch {args.batch_size} x "
          f"{args.seq_len}, {args.steps} steps, torch threads {torch.get_num_threads()}; load average "
          f"{calibration['load']}; matmul peak fp32 {calibration['cpu_float32']:.1f}, bf16 "
          f"{calibration['cpu_bfloat16']:.1f} GFLOP/s (native bf16: {calibration['cpu_native_bf16']}); freed memory "
          f"{'reused (geowh.allocator)' if reused else 'returned to the kernel (glibc defaults)'}")
    for step in range(1, args.steps + 1):
        batch = T._batch(tokens, step, config)
        lr = T.lr_at(step, args.steps, config)
        for dtype, r in runs.items():
            for group in r["opt"].param_groups:
                group["lr"] = lr
            start, cpu = time.perf_counter(), time.process_time()
            r["losses"].append(T._train_step(r["model"], r["opt"], batch, config, dev, dtype))
            if step > 1:  # the first step allocates
                r["wall"] += time.perf_counter() - start
                r["cpu"] += time.process_time() - cpu
    flops = step_flops(config, len(tokenizer))
    report = {"load_before": calibration["load"], "load": round(os.getloadavg()[0], 1), "peak_gflops": calibration,
              "steps": args.steps, "malloc_reuse": reused}
    for dtype, r in runs.items():
        timed = args.steps - 1
        gflops = flops * timed / r["wall"] / 1e9
        peak = peak_for(calibration, "cpu", dtype)
        per_cpu = flops * timed / r["cpu"] / 1e9
        peak_cpu = peak_for(calibration, "cpu", dtype, per_cpu_second=True)
        eval_loss = T._eval_loss(r["model"], eval_batch, dev, dtype)
        print(f"{dtype:9s} {timed / r['wall']:7.2f} steps/s, {r['cpu'] / timed:.3f} CPU s/step, {gflops:7.1f} GFLOP/s = "
              f"{100 * gflops / peak:4.1f}% of the {dtype} matmul peak ({100 * per_cpu / peak_cpu:4.1f}% per CPU second); last train loss {r['losses'][-1]:.4f}, "
              f"held-out {eval_loss:.4f}")
        report[dtype] = {"steps_per_s": round(timed / r["wall"], 3), "cpu_s_per_step": round(r["cpu"] / timed, 4),
                         "gflops": round(gflops, 1), "peak_share": round(gflops / peak, 3),
                         "peak_share_per_cpu_s": round(per_cpu / peak_cpu, 3), "eval_loss": round(eval_loss, 4)}
    a, b = (np.array(runs[k]["losses"]) for k in ("float32", "bfloat16"))
    late = slice(3 * len(a) // 4, None)
    diff = np.abs(a - b)
    report["speedup"] = round(runs["float32"]["wall"] / runs["bfloat16"]["wall"], 2)
    report["speedup_cpu_s"] = round(runs["float32"]["cpu"] / runs["bfloat16"]["cpu"], 2)
    report["loss_diff_mean_last_quarter"] = round(float(diff[late].mean()), 4)
    report["loss_diff_max_last_quarter"] = round(float(diff[late].max()), 4)
    print(f"bf16 / fp32: {report['speedup']:.2f}x steps/s, {report['speedup_cpu_s']:.2f}x CPU seconds; |Δ train loss| over the last quarter: mean "
          f"{report['loss_diff_mean_last_quarter']:.4f}, max {report['loss_diff_max_last_quarter']:.4f} "
          f"(fp32 mean loss there {a[late].mean():.4f}); load average {report['load']} at the end")
    assert all(math.isfinite(x) for x in a) and all(math.isfinite(x) for x in b)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
