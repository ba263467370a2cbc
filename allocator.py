"""Keep freed memory in the process instead of handing it back to the kernel after every step.

glibc serves an allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and
returns it with munmap when freed. A training step of train-mini at L1's shape allocates and
frees the LM head's logits and their gradients (32 × 128 × 8,000 floats, 131 MB each) every
step, so each step maps ~0.5 GB anew and touches it page by page: 128,000 page faults a step,
more CPU time in the kernel than in the model (measured: 0.24 s system against 0.20 s user
per step, fp32, one thread). With mmap off and trimming raised, freed blocks stay in the heap
and the next step reuses them: 1,600 faults a step, 2.2× (fp32) to 3× (bf16) the steps per
second on the same machine (docs/train-mini.md, "Page faults").

The price is that the process keeps its peak memory until it exits, which is what a training
or ingest process wants anyway. `GEOWH_MALLOC=system` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def reuse_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap and keep them there; once per process.

    True when the setting is in effect (Linux with glibc, and not turned off by
    `GEOWH_MALLOC=system`); elsewhere a no-op returning False.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("GEOWH_MALLOC", "").lower() == "system":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _done
