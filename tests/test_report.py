"""`geowh report`: one self-contained HTML file, checked as a file and rendered in headless Chromium."""

from __future__ import annotations

import base64
import gzip
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from report_data import MODELS, build

from geowh.queries.report import _fit_line, plotly_js, report, report_data


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    """Two models, three layers, per-layer phases stored, an eval and a memorization score."""
    from geowh.queries import phase_map

    root = tmp_path_factory.mktemp("report")
    wh = build(root / "w.duckdb")
    for model in MODELS:
        phase_map(wh, model)
    return wh


@pytest.fixture(scope="module")
def page(warehouse, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "report.html"
    summary = report(warehouse, out)
    return out, summary


def test_the_report_is_one_file_that_fetches_nothing(page):
    out, summary = page
    text = out.read_text()
    assert summary.bytes == out.stat().st_size < 10_000_000
    # Every script is inline; nothing is linked, imported or fetched at view time.
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", text)
    # plotly.js and the data, gzipped; the page's code, which unpacks them
    assert len(re.findall(r"<script", text)) == 3
    packed = dict(re.findall(r'<script type="application/gzip;base64" id="([^"]+)">([^<]+)</script>', text))
    plotly = gzip.decompress(base64.b64decode(packed["plotly-js"])).decode()
    assert plotly == plotly_js() and "Plotly" in plotly
    data = json.loads(gzip.decompress(base64.b64decode(packed["geowh-data"])))
    assert [m["model"] for m in data["models"]] == ["large", "small"]
    code = text.split("<script>", 1)[1]
    assert not re.search(r"\b(fetch|XMLHttpRequest|import\(|https?://)", code)


def test_the_report_holds_every_chart_its_data_calls_for(page):
    _, summary = page
    assert summary.models == ["large", "small"]
    assert summary.charts == ["trajectory-rankme", "trajectory-alpha_req", "spectrum", "layers-0-rankme",
                              "layers-0-alpha_req", "layers-1-rankme", "layers-1-alpha_req", "memorization", "evals"]


def test_the_report_carries_flops_fit_flags_baseline_and_provenance(warehouse):
    data = report_data(warehouse, "small")
    (model,) = data["models"]
    t = model["trajectory"]
    params, per_step = MODELS["small"]
    assert t["flops"] == pytest.approx([6.0 * params * step * per_step for step in t["step"]], rel=1e-5)  # 6 digits kept
    assert set(t["alpha_req_fit"]) == {"ok"}
    assert model["baseline"]["n"] == 400 and model["baseline"]["d"] == 64
    assert 55 < model["baseline"]["rankme"] < 64  # near d: random features fill every direction
    assert len(model["layers"]["layers"]) == 3 and model["layers"]["phases"]
    assert {r["hub_commits"] for r in data["provenance"]["runs"]} == {14}
    assert {p["phase"] for p in data["phases"]} >= {"warmup", "entropy-seeking"}


def test_the_fit_line_drawn_is_the_fit_that_gave_alpha():
    from geowh.spectrum_math import compute_metrics, metrics_dict

    k = np.arange(1, 201)
    lam = 3.0 * k ** -1.3 * np.exp(0.1 * np.sin(k))
    values = compute_metrics(lam, ["alpha_req"])
    alpha, params = values[0].value, values[0].params
    k0, y0, k1, y1 = _fit_line(lam, alpha, params)
    assert (k0, k1) == tuple(params["fit_range"])
    assert -(math.log(y1) - math.log(y0)) / (math.log(k1) - math.log(k0)) == pytest.approx(alpha)
    # The line passes through the fitted points: its weighted residuals average to zero.
    kk = np.arange(k0, k1 + 1)
    resid = np.log(lam[kk - 1] / lam[0]) - (math.log(y0) - alpha * np.log(kk / k0))
    assert np.dot(1 / kk, resid) == pytest.approx(0, abs=1e-9)
    assert metrics_dict(values)["alpha_req"] == alpha


def test_an_existing_report_is_kept_without_force_and_unknown_models_are_named(warehouse, tmp_path, cli):
    out = tmp_path / "r.html"
    out.write_text("mine")
    result = cli(["report", "--db", warehouse.path, "--out", out])
    assert result.exit_code == 1 and "--force" in result.output and out.read_text() == "mine"
    result = cli(["report", "--db", warehouse.path, "--model", "nope", "--out", tmp_path / "x.html"])
    assert result.exit_code == 1 and "nope" in result.output and "large, small" in result.output
    result = cli(["report", "--db", warehouse.path, "--model", "small", "--out", tmp_path / "s.html", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"] == ["small"]


# -- in a real browser ------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome")

# Installed before the page's scripts run: every error, rejected promise and console.error is kept.
HOOKS = """<script>window.__errors = [];
addEventListener("error", e => __errors.push(String(e.message)));
addEventListener("unhandledrejection", e => __errors.push("unhandled rejection: " + e.reason));
const __consoleError = console.error; console.error = (...a) => { __errors.push(a.join(" ")); __consoleError(...a); };
</script>"""

# Run after load: what every chart drew, then the checkpoint slider and the axis selector are used
# as a reader uses them (value set, input/change event dispatched) and the result is written into
# the page, which --dump-dom prints.
PROBE = """<script>addEventListener("load", () => window.geowhReady.finally(() => {
  const out = {errors: __errors, charts: {}};
  for (const id of D.charts) {
    const gd = document.getElementById(id);
    out.charts[id] = !gd ? null : {svg: gd.querySelectorAll("svg.main-svg").length,
      drawn: gd.querySelectorAll(".scatterlayer .trace path.js-line, .scatterlayer .trace .point, .heatmaplayer image").length,
      values: (gd.data || []).reduce((n, t) => n + (t.z ? t.z.flat().filter(v => v !== null).length : (t.y || []).length), 0)};
  }
  const gd = document.getElementById("spectrum"), slider = document.getElementById("spectrum-checkpoint");
  out.before = {checkpoint: gd.dataset.checkpoint, y: Array.from(gd.data[0].y), label: document.getElementById("spectrum-label").textContent};
  slider.value = 3; slider.dispatchEvent(new Event("input"));
  out.after = {checkpoint: gd.dataset.checkpoint, y: Array.from(gd.data[0].y), label: document.getElementById("spectrum-label").textContent};
  const axis = document.getElementById("x-axis"); axis.value = "flops"; axis.dispatchEvent(new Event("change"));
  out.flops = document.getElementById("trajectory-rankme").data.filter(t => t.mode === "lines+markers").map(t => [t.name, t.x.slice(0, 3)]);
  const pre = document.createElement("pre"); pre.id = "geowh-test"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}));</script>"""


def _browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    pytest.skip("no Chromium on this machine and none could be installed (make test apt-installs Debian's "
                "`chromium` when run as root); the report's browser test needs one")


def _render(html_path, browser: str) -> tuple[dict, str]:
    text = html_path.read_text()
    probed = html_path.with_name("probed.html")
    probed.write_text(text.replace("<head>", "<head>" + HOOKS, 1).replace("</body>", PROBE + "</body>", 1))
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={html_path.parent / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=20000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    found = re.search(r'<pre id="geowh-test">(.*?)</pre>', run.stdout, re.DOTALL)
    assert found, f"the page never finished: {run.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1))), run.stderr


@pytest.mark.slow
def test_in_chromium_every_chart_renders_without_errors_and_the_slider_moves_the_spectrum(page):
    browser = _browser()
    out, summary = page
    result, stderr = _render(out, browser)
    assert result["errors"] == []
    assert not [line for line in stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert set(result["charts"]) == set(summary.charts)
    for chart, drawn in result["charts"].items():
        assert drawn is not None and drawn["svg"] >= 1 and drawn["drawn"] >= 1 and drawn["values"] > 0, (chart, drawn)
    before, after = result["before"], result["after"]
    assert before["checkpoint"] == "step4000" and after["checkpoint"] == "step4"
    assert "step4 " in after["label"] and before["y"] != after["y"]
    steps = {name: x for name, x in result["flops"]}
    params, per_step = MODELS["large"]
    first = 6.0 * MODELS["small"][0] * per_step  # the offset: the smallest positive FLOPs shown
    assert steps["large"][1] == pytest.approx(6.0 * params * per_step + first)


def test_geowh_report_runs_as_a_user_runs_it(warehouse, tmp_path):
    import sys
    from pathlib import Path

    out = tmp_path / "r.html"
    run = subprocess.run([str(Path(sys.executable).with_name("geowh")), "report", "--db", str(warehouse.path), "--out", str(out),
                          "--model", "large", "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["bytes"] == out.stat().st_size
