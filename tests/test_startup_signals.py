"""Ctrl-C (or SIGTERM) at any moment of the CLI's start-up: one line and exit 130 (143), no traceback.

The signal is sent at named points of the start-up (tests/trip.py), not after a sleep, so each
case hits the same moment on an idle and on a loaded machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from trip import trip_env

# This environment's console script, as a user runs it (`make test` does not put the venv on PATH).
GEOWH = str(Path(sys.executable).with_name("geowh"))

# From the first import after the handler to the command running: Typer and Click, the commands
# registering (numpy, DuckDB and polars come with them), and Typer building and parsing the command.
STAGES = [
    "import:typer", "import:click.core", "import:geowh.cli.common", "import:duckdb", "import:polars",
    "import:geowh.cli.queries", "call:bare_options", "call:get_command", "call:parse_args",
]


def _stopped(result: subprocess.CompletedProcess, code: int, signal: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"stopped by {signal}"), result.stderr
    assert "Traceback" not in result.stderr and "Aborted" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_ctrl_c_at_each_point_of_the_start_up_exits_130_with_one_line(stage, tmp_path):
    env = os.environ | trip_env(tmp_path, stage) | {"COLUMNS": "120"}
    result = subprocess.run([GEOWH, "sql", "select 42", "--db", str(tmp_path / "none.duckdb")],
                            env=env, capture_output=True, text=True, timeout=120)
    _stopped(result, 130, "SIGINT")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["import:rich.console", "call:get_command"])
def test_sigterm_during_the_start_up_exits_143_with_one_line(stage, tmp_path):
    env = os.environ | trip_env(tmp_path, stage, "SIGTERM")
    result = subprocess.run([GEOWH, "info", "--db", str(tmp_path / "none.duckdb")],
                            env=env, capture_output=True, text=True, timeout=120)
    _stopped(result, 143, "SIGTERM")


def test_the_hook_fires_where_it_is_told_and_nowhere_else(tmp_path):
    """The harness itself: a stage that never comes leaves the command alone."""
    env = os.environ | trip_env(tmp_path, "import:no_such_module_geowh")
    result = subprocess.run([GEOWH, "sql", "select 42"], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0 and "42" in result.stdout, result.stderr


def test_importing_the_cli_leaves_the_signal_handlers_alone():
    code = ("import signal; before = signal.getsignal(signal.SIGINT); import geowh.cli, geowh.__main__; "
            "assert signal.getsignal(signal.SIGINT) is before; print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
