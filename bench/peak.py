"""This machine's matrix-multiply peak: the calibration the other benchmarks divide by.

Times square matrix products (torch.matmul, the kernel a transformer spends its FLOPs in) in
fp32 and bf16 on the CPU, and in bf16 on a GPU when there is one, and prints the best
GFLOP/s of each with the load average. `bench/extract.py` and `bench/live.py` call
`measure()` to print achieved/peak beside their own FLOP rates, and docs/scale.md gives this
machine's numbers.

A shared machine lowers the measured peak (other processes take the cores), so the load
average is part of the result: compare a run's achieved/peak only with a peak measured at
the same load, best in the same process (which is what the other benchmarks do).

    python bench/peak.py                  # CPU fp32 and bf16 (and the GPU's bf16), JSON last
    python bench/peak.py --size 2048 --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import time

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name substring:
# what a GPU promises, beside what `measure` finds it does.
BF16_PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "V100": 125.0,
}


def matmul_gflops(dtype, device="cpu", size: int = 2048, seconds: float = 1.0, per_cpu_second: bool = False) -> float:
    """Best GFLOP/s of (size × size) @ (size × size) products in `dtype` on `device`, over about `seconds`.

    `per_cpu_second`: GFLOP per second of this process's CPU time instead (all threads), the
    figure a loaded machine changes least: other processes take wall time, not CPU time.
    """
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b  # kernels, allocator
    sync()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start, cpu = time.perf_counter(), time.process_time()
        a @ b
        sync()
        took = time.perf_counter() - start
        best, spent = min(best, time.process_time() - cpu if per_cpu_second else took), spent + took
    return 2 * size**3 / best / 1e9


def measure(size: int = 2048, seconds: float = 1.0) -> dict:
    """{"cpu_float32", "cpu_bfloat16", "cuda_bfloat16" (GPU only): GFLOP/s; "cpu_float32_per_cpu_s",
    "cpu_bfloat16_per_cpu_s": GFLOP per CPU second; "load", "threads", "cpu_native_bf16"}."""
    import torch

    from geowh.ingest.sources.models import cpu_native_bf16

    out = {"load": round(os.getloadavg()[0], 1), "threads": torch.get_num_threads(), "cpu_native_bf16": cpu_native_bf16()}
    for dtype in ("float32", "bfloat16"):
        out[f"cpu_{dtype}"] = round(matmul_gflops(getattr(torch, dtype), "cpu", size, seconds), 1)
        out[f"cpu_{dtype}_per_cpu_s"] = round(matmul_gflops(getattr(torch, dtype), "cpu", size, seconds, True), 1)
    if torch.cuda.is_available():
        out["cuda_bfloat16"] = round(matmul_gflops(torch.bfloat16, "cuda", 8192, seconds), 1)
        out["cuda_name"] = torch.cuda.get_device_name(0)
    out["load_after"] = round(os.getloadavg()[0], 1)
    return out


def peak_for(calibration: dict, device_type: str, dtype: str, per_cpu_second: bool = False) -> float | None:
    """The measured peak (GFLOP/s, or GFLOP per CPU second) that a run on `device_type` in `dtype` is divided by."""
    if device_type == "cuda":
        return None if per_cpu_second else calibration.get("cuda_bfloat16")
    return calibration.get(f"cpu_{dtype}" + ("_per_cpu_s" if per_cpu_second else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="matrix side (default 2048)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per dtype (default 2 s)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.size, args.seconds)
    print(f"CPU, {result['threads']} threads, native bf16: {result['cpu_native_bf16']}; load average {result['load']} "
          f"before, {result['load_after']} after")
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        print(f"  {name} matmul: {result['cpu_' + dtype]:8.1f} GFLOP/s, {result['cpu_' + dtype + '_per_cpu_s']:8.1f} GFLOP per CPU second")
    print(f"  bf16 / fp32: {result['cpu_bfloat16'] / result['cpu_float32']:.2f}x wall, "
          f"{result['cpu_bfloat16_per_cpu_s'] / result['cpu_float32_per_cpu_s']:.2f}x per CPU second")
    if "cuda_bfloat16" in result:
        print(f"{result['cuda_name']}: bf16 matmul {result['cuda_bfloat16'] / 1000:.1f} TFLOP/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
