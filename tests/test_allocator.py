"""geowh.allocator: large blocks freed by one training step are reused by the next, not re-faulted."""

import json
import os
import subprocess
import sys

import pytest

# A step's worth of large temporaries (the LM head's logits at L1's shape are 131 MB): allocate,
# touch every page, free; count the minor page faults of the last rounds.
PROBE = """
import json, resource, sys
import numpy as np
from geowh.allocator import reuse_freed_memory
on = reuse_freed_memory()
def step():
    a = np.ones(16_000_000, dtype=np.float32)   # 64 MB, above glibc's mmap threshold
    b = a * 2.0
    del a, b
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"on": on, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_large_blocks_are_reused_instead_of_faulted_in_again():
    env = {k: v for k, v in os.environ.items() if k != "GEOWH_MALLOC"}
    kept = _faults(env)
    returned = _faults({**env, "GEOWH_MALLOC": "system"})
    assert kept["on"] and not returned["on"]
    # glibc's default maps 128 MB anew per round: thousands of faults (tens of thousands without
    # transparent huge pages); reused, next to none.
    assert returned["faults"] > 1_000
    assert kept["faults"] < returned["faults"] / 20
