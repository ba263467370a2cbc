"""train-mini: the default corpus, the schedule, and reduced runs that `geowh ingest` can read."""

from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import pytest

from geowh.errors import InputError
from geowh.repro import corpus as corpus_mod
from geowh.repro.train import TrainConfig, checkpoint_steps, lr_at, plan_steps, train_mini

# A tiny model that still has every part of the architecture.
TINY = dict(layers=1, d_model=32, vocab=300, batch_size=4, seq_len=32, checkpoints=2)
STEPS = 8


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    """Real English from a few standard-library modules: their docstrings and comments."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / f for f in ("argparse.py", "inspect.py", "typing.py", "pathlib.py", "dataclasses.py")]
    docs = list(corpus_mod._documents("files", files))
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_file):
    """One reduced run made through the CLI, shared by the tests that only read it."""
    from typer.testing import CliRunner

    from geowh.cli import app

    out = tmp_path_factory.mktemp("runs") / "mini"
    args = ["train-mini", out, "--steps", STEPS, "--corpus", text_file, "--json"]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", value]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


# -- the schedule ----------------------------------------------------------------------------------


def test_the_schedule_is_step_zero_then_half_powers_of_two_then_evenly_spaced():
    steps = checkpoint_steps(2000, evenly=20)
    assert steps[:14] == [0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91]
    assert steps[14:] == list(range(100, 2001, 100))
    assert checkpoint_steps(7, evenly=20) == list(range(8))  # short runs save every step
    assert checkpoint_steps(1001, evenly=10)[-1] == 1001  # the last step is always saved


def test_the_learning_rate_warms_up_then_decays_by_cosine_to_its_floor():
    config = TrainConfig(lr=1e-3, warmup=0.1, min_lr_ratio=0.1)
    assert lr_at(5, 100, config) == pytest.approx(5e-4)
    assert lr_at(10, 100, config) == pytest.approx(1e-3)
    assert lr_at(55, 100, config) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert lr_at(100, 100, config) == pytest.approx(1e-4)
    rates = [lr_at(s, 100, config) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_a_min_lr_ratio_of_one_holds_the_learning_rate_constant_after_the_warmup():
    config = TrainConfig(lr=2e-3, warmup=0.01, min_lr_ratio=1.0)
    assert lr_at(20, 4000, config) == pytest.approx(1e-3)
    assert all(lr_at(s, 4000, config) == pytest.approx(2e-3) for s in range(40, 4001))


def test_the_schedule_and_weight_decay_options_reach_the_run_and_its_resume_check(run, text_file):
    from typer.testing import CliRunner

    from geowh.cli import app

    out, _ = run
    args = ["train-mini", out, "--steps", STEPS, "--corpus", text_file, "--min-lr-ratio", 1.0, "--weight-decay", 0.1]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", value]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1
    assert "min_lr_ratio 0.1 → 1.0; weight_decay 0.01 → 0.1" in " ".join(result.output.split())


def test_a_time_budget_plans_the_steps_and_checkpoint_saves_that_fit_in_it():
    total = plan_steps(600, step_seconds=0.25, save_seconds=0.5, evenly=20)
    saves = len(checkpoint_steps(total, 20)) * 0.5
    assert total * 0.25 + saves <= 600 < (total + 2) * 0.25 + saves
    assert plan_steps(0.1, step_seconds=1, save_seconds=1, evenly=20) == 1


# -- the corpus --------------------------------------------------------------------------------------


def test_corpus_extraction_keeps_prose_and_drops_code_pragmas_and_license_boilerplate(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        '# Copyright 2024 Someone. Licensed under the Apache License, Version 2.0 (the "License");\n'
        "# you may not use this file except in compliance with the License.\n"
        "import os  # noqa: F401\n\n"
        "def f(x):\n"
        '    """Return the square of a number, which is the number multiplied by itself once.\n\n'
        "    >>> f(3)\n    9\n"
        '    """\n'
        "    # The cache below keeps results between calls, because computing them again is slow.\n"
        "    # It is cleared when the module is reloaded.\n"
        "    return x * x\n\n"
        "# x = [1, 2, 3]; y = {k: v for k, v in zip(x, x)}; print(y[1] + y[2] * 3 - 4)\n",
        encoding="utf-8",
    )
    docs = list(corpus_mod._documents("files", [source]))
    assert docs == [
        "Return the square of a number, which is the number multiplied by itself once.",
        "The cache below keeps results between calls, because computing them again is slow. "
        "It is cleared when the module is reloaded.",
    ]


def test_the_default_corpus_is_built_once_then_read_from_the_cache(tmp_path, monkeypatch):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + [stdlib / "argparse.py"]
    monkeypatch.setenv("GEOWH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(corpus_mod, "corpus_sources", lambda: [("python-stdlib", "x", files)])
    monkeypatch.setattr(corpus_mod, "MIN_BYTES", 1000)
    built = corpus_mod.python_docs_corpus()
    assert built.path.is_file() and built.path.is_relative_to(tmp_path / "home" / "corpus")
    assert all("\n" not in t for t in built.texts) and len(set(built.texts)) == len(built.texts)
    monkeypatch.setattr(corpus_mod, "_documents", lambda *a: pytest.fail("the cache was not used"))
    cached = corpus_mod.python_docs_corpus()
    assert cached.texts == built.texts and cached.sha256 == built.sha256
    assert cached.sources[0]["documents"] == len(built.texts)


def test_a_default_corpus_under_the_size_floor_is_refused_with_the_way_out(tmp_path, monkeypatch):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    monkeypatch.setenv("GEOWH_HOME", str(tmp_path))
    monkeypatch.setattr(corpus_mod, "corpus_sources", lambda: [("python-stdlib", "x", [stdlib / "argparse.py"])])
    with pytest.raises(InputError, match="--corpus"):
        corpus_mod.python_docs_corpus()


# -- reduced runs ------------------------------------------------------------------------------------


def test_a_reduced_run_saves_loadable_checkpoints_with_their_tokenizer_on_the_schedule(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = run
    expected = [f"step{s}" for s in checkpoint_steps(STEPS, TINY["checkpoints"])]
    assert len(expected) >= 4 and summary["checkpoints"] == expected and summary["status"] == "trained"
    weights = {}
    for label in expected:
        model = AutoModelForCausalLM.from_pretrained(out / label)
        tokenizer = AutoTokenizer.from_pretrained(out / label)
        assert model.config.model_type == "gpt_neox" and model.config.hidden_size == TINY["d_model"]
        assert len(tokenizer) == model.config.vocab_size == TINY["vocab"]
        assert tokenizer.decode(tokenizer("The end.")["input_ids"]) == "The end."
        weights[label] = model.gpt_neox.embed_in.weight.detach().clone()
    assert not weights["step0"].equal(weights[f"step{STEPS}"])  # it trained
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [int(label[4:]) for label in expected]
    assert all(math.isfinite(r["eval_loss"]) for r in log)


def test_each_checkpoint_logs_the_rankme_and_alpha_req_that_an_ingest_of_it_finds(run, tmp_path):
    from geowh.ingest.config import IngestConfig, Selection
    from geowh.ingest.engine.run import ingest
    from geowh.repro.train import LIVE_PROBE_N
    from geowh.warehouse import Warehouse

    out, _ = run
    log = {r["step"]: r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())}
    assert all(r["rankme"] >= 1 and r["alpha_req"] > 0 for r in log.values())
    ingest(out, IngestConfig(probe=str(out / "probe.txt"), n=LIVE_PROBE_N, max_len=TINY["seq_len"], device="cpu"),
           Selection(f"0,{STEPS}"), db=tmp_path / "w.duckdb")
    found = Warehouse(tmp_path / "w.duckdb").query(
        "SELECT c.step, m.metric, m.value FROM metrics m JOIN checkpoints c USING (model, checkpoint) "
        "WHERE m.metric IN ('rankme', 'alpha_req')"
    )
    assert found.height == 4
    for step, metric, value in found.rows():
        assert math.isclose(log[step][metric], value, rel_tol=1e-5), (step, metric)


def test_geowh_reads_the_run_as_an_ordinary_local_series_with_a_held_out_probe(run, text_file):
    from geowh.ingest.sources.series import resolve_series

    out, summary = run
    series = resolve_series(str(out))
    assert [r.step for r in series.checkpoints] == checkpoint_steps(STEPS, TINY["checkpoints"])
    probe = (out / "probe.txt").read_text(encoding="utf-8").splitlines()
    corpus_docs = text_file.read_text(encoding="utf-8").splitlines()
    assert probe and set(probe) <= set(corpus_docs)
    assert summary["corpus"]["train_documents"] + len(probe) == len(corpus_docs)
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["d_model"] == TINY["d_model"] and saved["plan"]["total_steps"] == STEPS


def test_rerunning_a_finished_run_reuses_it_and_other_settings_are_refused(run, text_file):
    out, summary = run
    config = TrainConfig(**TINY, corpus=(str(text_file),))
    mtime = (out / f"step{STEPS}" / "model.safetensors").stat().st_mtime_ns
    again = train_mini(out, config, steps=STEPS)
    assert again.status == "reused" and again.checkpoints == summary["checkpoints"]
    assert (out / f"step{STEPS}" / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(InputError, match="d_model 32 → 64"):
        train_mini(out, TrainConfig(**TINY | {"d_model": 64}, corpus=(str(text_file),)), steps=STEPS)
    with pytest.raises(InputError, match="not 9"):
        train_mini(out, config, steps=STEPS + 1)


def test_an_interrupted_run_resumes_to_the_same_weights_as_an_uninterrupted_one(run, text_file, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from geowh.repro import train as train_mod

    out, _ = run
    config = TrainConfig(**TINY, corpus=(str(text_file),))
    real_step, calls = train_mod._train_step, []

    def crash_at_step_six(*args):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(train_mod, "_train_step", crash_at_step_six)
    with pytest.raises(KeyboardInterrupt):
        train_mini(tmp_path / "mini", config, steps=STEPS)
    monkeypatch.setattr(train_mod, "_train_step", real_step)
    assert not (tmp_path / "mini" / f"step{STEPS}").exists()

    events = []
    resumed = train_mini(tmp_path / "mini", config, steps=STEPS, progress=events.append)
    assert resumed.status == "resumed"
    bar = [(e.done, e.total) for e in events if e.kind == "bar" and e.text == "steps"]
    assert bar[0] == (4, STEPS) and bar[-1] == (STEPS, STEPS)  # resumed after step 4, the bar starts there
    assert any(e.kind == "info" for e in events)
    a = load_file(out / f"step{STEPS}" / "model.safetensors")
    b = load_file(tmp_path / "mini" / f"step{STEPS}" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].allclose(b[k], atol=1e-6) for k in a)


def test_a_time_budget_is_turned_into_a_planned_step_count(text_file, tmp_path, monkeypatch, capfd):
    from geowh.repro import train as train_mod

    monkeypatch.setattr(train_mod, "CALIBRATION_SECONDS", 0.2)
    summary = train_mini(tmp_path / "timed", TrainConfig(**TINY, corpus=(str(text_file),)), minutes=0.1)
    assert capfd.readouterr() == ("", "")  # the library draws nothing unless given a report
    plan = summary.config["plan"]
    assert plan["step_seconds"] > 0 and plan["total_steps"] == summary.steps >= 1
    assert summary.checkpoints == [f"step{s}" for s in plan["checkpoint_steps"]]


@pytest.mark.gpu
def test_a_run_on_the_gpu_saves_checkpoints_like_a_cpu_run(text_file, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    summary = train_mini(tmp_path / "gpu", TrainConfig(**TINY, corpus=(str(text_file),)), steps=4, device="cuda")
    assert summary.device.startswith("cuda") and summary.checkpoints[-1] == "step4"


def test_a_bf16_run_is_reproducible_and_keeps_its_dtype_while_an_fp32_run_stays_fp32(run, text_file, tmp_path):
    """Determinism holds per dtype: two bf16 runs end in the same weights, which differ from fp32's."""
    from safetensors.torch import load_file

    out, summary = run
    assert summary["config"]["plan"]["dtype"] == "float32"  # the suite pins auto to fp32 (conftest)
    config = TrainConfig(**TINY, corpus=(str(text_file),))
    runs = [train_mini(tmp_path / f"bf16-{i}", config, steps=STEPS, dtype="bfloat16") for i in range(2)]
    assert all(r.config["plan"]["dtype"] == "bfloat16" for r in runs)
    a, b = (load_file(tmp_path / f"bf16-{i}" / f"step{STEPS}" / "model.safetensors") for i in range(2))
    fp32 = load_file(out / f"step{STEPS}" / "model.safetensors")
    assert all(a[k].dtype == fp32[k].dtype and a[k].equal(b[k]) for k in a)  # fp32 weights, same run twice
    assert any(not a[k].allclose(fp32[k], atol=1e-6) for k in a)  # autocast did run in bf16
    with pytest.raises(InputError, match="--dtype"):
        train_mini(tmp_path / "bad", config, steps=STEPS, dtype="float8")
