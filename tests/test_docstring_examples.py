"""The examples in module docstrings run as written."""

from __future__ import annotations

import textwrap

import numpy as np


def _example(doc: str) -> str:
    """The indented block of a docstring: its example."""
    lines = [line for line in doc.splitlines() if line.startswith("    ")]
    return textwrap.dedent("\n".join(lines))


def test_the_spectrum_math_example_runs():
    import geowh.spectrum_math as spectrum_math

    code = _example(spectrum_math.__doc__)
    assert "compute_metrics(" in code
    scope = vars(spectrum_math) | {"eigenvalues": np.sort(np.random.default_rng(0).pareto(2.0, 300))[::-1]}
    exec(code, scope)
    assert {"rankme", "alpha_req"} <= set(scope["metrics_dict"](scope["values"]))
