"""geowh demo: a reduced run end to end (train → index → QA task → ingest with memorization → phases)."""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import pytest

from geowh.repro import corpus as corpus_mod
from geowh.repro.demo import DemoConfig, demo, derive_task, first_sentence
from geowh.repro.train import TrainConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Modules with many documented public functions: their docstrings are the corpus and the task.
SOURCES = [STDLIB / f for f in ("argparse.py", "inspect.py", "typing.py", "pathlib.py", "dataclasses.py", "textwrap.py",
                                "shutil.py", "tarfile.py")]
# A tiny model with every part of the architecture; 16 steps give 8 checkpoints (0 1 2 3 4 8 12 16).
TINY = TrainConfig(layers=1, d_model=32, vocab=300, batch_size=4, seq_len=32, checkpoints=4)
STEPS = 16


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """One reduced demo, shared by the tests that read it: (out, db, summary)."""
    root = tmp_path_factory.mktemp("demo")
    text = root / "docs.txt"
    docs = dict.fromkeys(corpus_mod._documents("files", SOURCES))  # deduplicated, as the default corpus is
    text.write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    config = TrainConfig(**{**TINY.to_dict(), "corpus": (str(text),)})
    out, db = root / "mini", root / "w.duckdb"
    summary = demo(out, db, DemoConfig(steps=STEPS, train=config, qa_items=40, qa_sources=SOURCES))
    return out, db, summary


@pytest.mark.slow  # a second demo end to end: 43 s of the fast tier's 19 min (docs/testing.md)
def test_a_second_demo_with_default_steps_gives_the_same_metrics_as_the_first(mini, tmp_path, monkeypatch):
    """The demo trains a fixed number of steps, so a rerun elsewhere gives the same trajectory."""
    import geowh.repro.demo as demo_mod
    from geowh.warehouse import Warehouse

    out, db, first = mini
    monkeypatch.setattr(demo_mod, "DEFAULT_STEPS", STEPS)  # the default path, scaled down: no steps, no minutes
    config = demo_mod.saved_run(out)[0]
    again = demo(tmp_path / "mini", tmp_path / "w.duckdb", DemoConfig(train=config, qa_items=40, qa_sources=SOURCES))
    assert again.train["steps"] == STEPS and again.train["status"] == "trained"

    def metrics(path):
        return Warehouse(path).query(
            "SELECT checkpoint, probe, coalesce(layer, -1) AS layer, coalesce(pooling, '') AS pooling, metric, value "
            "FROM metrics ORDER BY ALL").to_dicts()

    a, b = metrics(db), metrics(tmp_path / "w.duckdb")
    assert len(a) == len(b) > 8 * 3 and {r["metric"] for r in a} >= {"rankme", "alpha_req", "memorization_spearman"}
    assert [{k: v for k, v in r.items() if k != "value"} for r in a] == [
        {k: v for k, v in r.items() if k != "value"} for r in b]
    for x, y in zip(a, b):
        assert y["value"] == pytest.approx(x["value"], rel=1e-5, abs=1e-6, nan_ok=True), x
    losses = [[json.loads(line)["eval_loss"] for line in (o / "train_log.jsonl").read_text().splitlines()]
              for o in (out, tmp_path / "mini")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


def test_the_demo_takes_steps_or_minutes_not_both(tmp_path):
    from geowh.errors import InputError

    with pytest.raises(InputError, match="not both"):
        DemoConfig(steps=10, minutes=1.0)


def test_a_first_sentence_is_the_answer_only_when_it_is_prose_of_a_few_words():
    assert first_sentence("Join two or more pathname components, inserting '/' as needed.\n\nMore.") == (
        "Join two or more pathname components, inserting '/' as needed."
    )
    assert first_sentence("Return   the\n  value of x.  Then more.") == "Return the value of x."
    assert first_sentence("Too short.") is None
    assert first_sentence("x = f(a[1], b[2]) + g(c[3], d[4]) / 2.") is None  # code, not prose
    assert first_sentence("") is None


def test_the_task_keeps_only_answers_that_occur_in_the_training_split(tmp_path):
    class Index:  # a stand-in that knows one sentence
        def tokenize(self, text):
            return [text.strip()]

        def count(self, ids):
            return int(ids == ["Return a shallow copy of the list given."])

    source = tmp_path / "shelf.py"
    source.write_text(
        "def copy(xs):\n    '''Return a shallow copy of the list given.'''\n\n"
        "def other():\n    '''Compute something that the corpus never saw at all.'''\n\n"
        "def _private():\n    '''Return a shallow copy of the list given.'''\n\n"
        "class Box:\n    '''Return a shallow copy of the list given.'''\n",
        encoding="utf-8",
    )
    items = derive_task([source], Index(), limit=10)
    # distinct answers: the class repeats the function's sentence, the private function is skipped
    assert items == [{"id": "shelf:0", "question": "What does shelf.copy do?",
                      "answer": "Return a shallow copy of the list given."}]


def test_the_mini_demo_writes_a_trajectory_with_finite_geometry_for_every_checkpoint(mini):
    from geowh.warehouse import Warehouse

    out, db, summary = mini
    assert summary.train["status"] == "trained" and summary.train["checkpoints"] == 8
    assert summary.ingest == summary.ingest | {"ok": 8, "skipped": 0, "failed": 0}
    rows = Warehouse(db).query(
        "SELECT checkpoint, step, rankme, alpha_req FROM trajectories WHERE model = ? AND probe LIKE 'probe.txt-%' "
        "ORDER BY step", [summary.model]).to_dicts()
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 8, 12, 16]
    assert all(math.isfinite(r["rankme"]) and 1 <= r["rankme"] <= TINY.d_model for r in rows)
    assert all(math.isfinite(r["alpha_req"]) for r in rows)


def test_the_mini_demo_scores_memorization_on_a_task_derived_from_its_training_split(mini):
    from geowh.warehouse import Warehouse

    out, db, summary = mini
    items = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    assert summary.task == {"file": str(out / "qa.jsonl"), "items": len(items), "status": "derived"}
    assert 10 <= len(items) <= 40 and all(i["question"].startswith("What ") for i in items)
    train_text = (out / "train.txt").read_text()
    probe_text = (out / "probe.txt").read_text()
    assert all(i["answer"] in train_text for i in items)
    assert not set(train_text.splitlines()) & set(probe_text.splitlines())  # the probe is held out
    wh = Warehouse(db)
    metric = wh.query("SELECT checkpoint, value, params FROM metrics WHERE metric = 'memorization_spearman' "
                      "AND model = ?", [summary.model])
    assert metric.height == 8
    assert all(-1 <= v <= 1 for v in metric["value"].to_list()), metric  # n ≥ 3 items, both sides vary
    assert all(json.loads(p)["n"] >= 3 for p in metric["params"].to_list())
    items_scored = wh.query("SELECT count(*) AS n FROM memorization_items WHERE model = ?", [summary.model])
    assert items_scored["n"][0] == 8 * len(items)


def test_the_mini_demo_finds_phases_and_writes_both_plots(mini):
    from geowh.warehouse import Warehouse

    out, db, summary = mini
    assert summary.phases and summary.phases[0]["start_step"] == 0 and summary.phases[-1]["end_step"] == STEPS
    stored = Warehouse(db).query("SELECT phase FROM phases WHERE model = ? ORDER BY phase_index", [summary.model])
    assert stored["phase"].to_list() == [p["phase"] for p in summary.phases]
    for name in ("geometry", "memorization"):
        png = Path(summary.plots[name])
        assert png == out / f"{name}.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary.memorization_by_phase and {r["phase"] for r in summary.memorization_by_phase} <= {
        p["phase"] for p in summary.phases}


def test_rerunning_the_demo_through_the_cli_does_no_training_indexing_or_ingest_work(mini, cli):
    out, db, first = mini
    index_files = {p.name: p.stat().st_mtime_ns for p in (out / "index").iterdir()}
    result = cli(["demo", out, "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["train"]["status"] == "reused" and again["train"]["steps"] == STEPS
    assert again["index"]["status"] == "reused" and again["task"]["status"] == "reused"
    assert again["ingest"] | {"errors": []} == {**first.ingest, "ok": 0, "skipped": 8, "errors": []}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "index").iterdir()} == index_files
    assert [p["phase"] for p in again["phases"]] == [p["phase"] for p in first.phases]


def test_the_demo_prints_the_phase_table_and_where_the_plots_are(mini, cli):
    out, db, first = mini
    result = cli(["demo", out, "--db", db, "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")]
    assert "phases of mini" in result.stdout and {p["phase"] for p in first.phases} <= set(rows)
    assert f"geometry plot: {out / 'geometry.png'}" in result.stdout.replace("\n", "")


# What docs/train-mini.md reports for the shipped trajectory of `geowh demo --long` (default parameters).
SHIPPED_PHASES = [("warmup", 0, 181), ("entropy-seeking", 181, 1000), ("compression-seeking", 1000, 8000)]


def test_the_shipped_long_run_loads_and_shows_the_phases_the_docs_report(tmp_path):
    import numpy as np
    import polars as pl

    from geowh.repro.demo import SHIPPED_MODEL, load_shipped, shipped_files
    from geowh.spectrum_math import rankme
    from geowh.warehouse import Warehouse

    assert all(p.is_file() and p.stat().st_size < 200_000 for p in shipped_files().values())
    wh = Warehouse(tmp_path / "w.duckdb")
    loaded = load_shipped(wh)
    assert [(p["phase"], p["start_step"], p["end_step"]) for p in loaded["phases"]] == SHIPPED_PHASES
    # the spectra are the ones the shipped RankMe was computed from
    rows = wh.query(
        "SELECT s.eigenvalues, m.value FROM spectra s JOIN metrics m USING (model, checkpoint, probe, layer, pooling) "
        "WHERE m.metric = 'rankme' AND s.model = ?", [SHIPPED_MODEL]).to_dicts()
    assert len(rows) == loaded["spectra"] == pl.read_parquet(shipped_files()["spectra"]).height > 30
    assert all(rankme(np.array(r["eigenvalues"]))[0] == pytest.approx(r["value"], rel=1e-9) for r in rows)
    # loading again changes nothing
    assert load_shipped(wh)["imported"]["status"] == "unchanged"
    assert wh.query("SELECT count(*) AS n FROM spectra")["n"][0] == len(rows)


def test_geowh_demo_shipped_prints_the_phases_as_json_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from geowh.cli import main; main()", "demo", "--shipped", "--db",
         str(tmp_path / "w.duckdb"), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert [(p["phase"], p["start_step"], p["end_step"]) for p in loaded["phases"]] == SHIPPED_PHASES
