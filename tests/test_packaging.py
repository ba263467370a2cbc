"""A plain (non-editable) install carries the whole package and schema.sql."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_built_wheel_installs_and_opens_a_warehouse_without_the_source_tree(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, ROOT],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("geowh-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"geowh/schema.sql", "geowh/warehouse/store.py", "geowh/ingest/__init__.py",
            "geowh/queries/__init__.py", "geowh/cli/__init__.py", "geowh/integrations/__init__.py",
            "geowh/data/demo-long-metrics.parquet", "geowh/data/demo-long-spectra.parquet"} <= names
    assert not any(n.startswith(("geowh/tests/", "geowh/bench/")) for n in names)
    # the console script installs its Ctrl-C handler before importing the CLI (geowh/__main__.py)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "geowh = geowh.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "geowh/__main__.py" in names
    # pyproject lists the packages by hand: a folder left out of it would be missing from the wheel.
    folders = {p.parent.relative_to(ROOT) for p in ROOT.glob("**/__init__.py")
               if not p.relative_to(ROOT).parts[0].startswith((".", "tests", "bench", "build"))}
    assert {f"geowh/{f.as_posix()}/__init__.py".replace("geowh/./", "geowh/") for f in folders} <= names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
                   check=True, capture_output=True)
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r})\n"
        "import geowh\n"
        "from geowh.warehouse import Warehouse\n"
        f"assert geowh.__file__.startswith({str(target)!r}), geowh.__file__\n"
        "from geowh.warehouse.runs import code_commit\n"
        "assert code_commit() is None, code_commit()  # an installed package names no commit\n"
        f"print(Warehouse({str(tmp_path / 'w.duckdb')!r}).sql('select 42 as x', missing_ok=True)['x'][0])\n"
    )
    # Isolated mode, outside the repository: the source tree cannot be imported by accident.
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
