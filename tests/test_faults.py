"""The fault-injection suite (bench/faults.py) at CI size: every figure that must be 0 is 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "faults.py"


@pytest.mark.slow
def test_kills_signals_a_lock_holder_and_a_full_disk_lose_and_leave_nothing():
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    total = figures["total"]
    assert total["trials"] >= 5 and total["opens"] == total["trials"], figures["by_kind"]
    for figure in ("partial", "resume_differs", "lost", "tracebacks", "stale_running", "not_one_line"):
        assert total[figure] == 0, (figure, figures["by_kind"])


@pytest.mark.slow
def test_the_hostile_input_suite_has_no_traceback_crash_hang_wrong_result_or_loss():
    result = subprocess.run([sys.executable, str(BENCH), "--hostile", "--quick", "--json"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    total = figures["total"]
    assert total["attacks"] >= 5, figures["by_attack"]  # a read-only mount needs root, --ray the ray extra
    for figure in ("tracebacks", "crashes", "hangs", "not_one_line", "silent_wrong", "data_lost"):
        assert total[figure] == 0, (figure, {k: v for k, v in figures["by_attack"].items() if v[figure]})
