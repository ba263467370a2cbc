"""Ingest end to end on tiny real models: features, metrics, resume, failures, hub cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from tiny import corrupt, save_hub_cache, save_series, tiny_model, tokenizer, write_docs

N, MAX_LEN = 500, 128


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with ./my-run (4 tiny GPT-NeoX checkpoints) and docs.txt (stdlib docstrings)."""
    root = tmp_path_factory.mktemp("ingest")
    save_series(root / "my-run")
    write_docs(root / "docs.txt")
    return root


@pytest.fixture(scope="module")
def ingested(workdir):
    """The issue's end-to-end command, run once: `geowh ingest ./my-run --probe docs.txt --n 500 --max-len 128`."""
    from typer.testing import CliRunner

    from geowh.cli import app

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        result = CliRunner().invoke(
            app, ["ingest", "./my-run", "--probe", "docs.txt", "--n", str(N), "--max-len", str(MAX_LEN), "--db", "w.duckdb"]
        )
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return workdir / "w.duckdb"


def _features_one_by_one(model, ids, pooling="last"):
    import torch

    rows = []
    with torch.inference_mode():
        for seq in ids:
            hidden = model(input_ids=torch.tensor([seq])).last_hidden_state[0]  # (seq, d)
            rows.append(hidden[-1] if pooling == "last" else hidden.mean(0))
    return torch.stack(rows).numpy()


# GPT-2's absolute position embeddings make a sequence shifted by left padding (no position ids) differ.
@pytest.mark.parametrize("arch", ["gpt-neox", "olmo-2", "gpt2"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_padded_features_equal_one_sequence_at_a_time(arch, padding_side):
    from geowh.ingest.features.extract import extract_features

    model = tiny_model(arch).base_model
    rng = np.random.default_rng(0)
    ids = [rng.integers(2, 50000, size=int(k)).tolist() for k in rng.integers(1, 40, size=12)]
    out = {}
    for batch in extract_features(
        model, ids, pad_id=0, layers=[2], poolings=["last", "mean"], batch_size=5, padding_side=padding_side
    ):
        for key, f in batch.features.items():
            out.setdefault(key, np.zeros((len(ids), f.shape[1])))[batch.indices] = f.numpy()
    for pooling in ("last", "mean"):
        alone = _features_one_by_one(model, ids, pooling)
        assert np.abs(out[(2, pooling)] - alone).max() <= 1e-5


def test_the_end_to_end_command_fills_trajectories(ingested, cli):
    result = cli(["sql", "select step, rankme, alpha_req from trajectories order by step", "--db", ingested, "-f", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["step"] for r in rows] == [0, 1, 2, 4]
    assert all(r["rankme"] > 1 and np.isfinite(r["alpha_req"]) for r in rows)
    assert len({r["rankme"] for r in rows}) == 4  # the checkpoints differ, so do their spectra


def test_warehouse_metrics_equal_metrics_of_independently_extracted_features(ingested, workdir):
    import torch
    from transformers import AutoModel

    from geowh.spectrum_math import compute_metrics, metrics_dict
    from geowh.warehouse import Warehouse

    tok = tokenizer()
    docs = (workdir / "docs.txt").read_text().splitlines()
    ids = [tok(d, truncation=True, max_length=MAX_LEN)["input_ids"] for d in docs if d.strip()]
    ids = [s for s in ids if len(s) > 32]
    if len(ids) > N:  # the probe's documented sample: N of the usable documents, seed 0, file order
        ids = [ids[i] for i in np.sort(np.random.default_rng(0).choice(len(ids), N, replace=False))]
    model = AutoModel.from_pretrained(workdir / "my-run" / "step2", dtype=torch.float32).eval()
    # Plain HF batching with right padding (positions need no care), last real token by mask sum.
    f = []
    with torch.inference_mode():
        for i in range(0, len(ids), 100):
            batch = tok.pad({"input_ids": ids[i : i + 100]}, padding_side="right", return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (batch, seq, d)
            last = batch["attention_mask"].sum(1) - 1
            f.append(hidden[torch.arange(len(last)), last].numpy())
    f = np.concatenate(f).astype(np.float64)
    centred = f - f.mean(0)
    expected = metrics_dict(compute_metrics(np.linalg.eigvalsh(centred.T @ centred / len(f))))

    stored = Warehouse(ingested).query(
        "select metric, value from metrics where model = 'my-run' and checkpoint = 'step2' and layer = 2 and pooling = 'last'"
    )
    got = dict(zip(stored["metric"], stored["value"]))
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    spectrum = Warehouse(ingested).query("select n_samples, d from spectra where checkpoint = 'step2'").row(0)
    assert spectrum == (len(ids), 64)


def test_resume_does_no_forward_pass_for_a_completed_checkpoint(ingested, workdir, monkeypatch):
    import geowh.ingest.sources.models as models
    from geowh.ingest import IngestConfig, Selection, ingest
    from geowh.warehouse import Warehouse

    loads = []
    real = models.load_checkpoint
    monkeypatch.setattr(models, "load_checkpoint", lambda ref, **kw: loads.append(ref.label) or real(ref, **kw))
    before = Warehouse(ingested).query("select count(*) as n from runs")["n"][0]
    summary = ingest(workdir / "my-run", IngestConfig(probe=str(workdir / "docs.txt"), n=N, max_len=MAX_LEN), db=ingested)
    assert loads == []
    assert [c["status"] for c in summary.checkpoints] == ["skipped"] * 4
    assert Warehouse(ingested).query("select count(*) as n from runs")["n"][0] == before

    # Another setting is another config: it does run (one checkpoint, to stay quick).
    summary = ingest(
        workdir / "my-run", IngestConfig(probe=str(workdir / "docs.txt"), n=50, max_len=MAX_LEN), Selection("step4"),
        db=ingested,
    )
    assert loads == ["step4"] and summary.count("ok") == 1


def test_a_corrupt_checkpoint_gets_a_failed_run_while_the_others_succeed(workdir, tmp_path, cli):
    from geowh.warehouse import Warehouse

    run = tmp_path / "run"
    shutil.copytree(workdir / "my-run", run)
    corrupt(run / "step2")
    (run / "step8").mkdir()  # named like a checkpoint, never written: missing weights
    shutil.copytree(run / "step4", run / "step6")  # weights file without one tensor: incomplete
    tensors = load_file(run / "step6" / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layers.1.mlp" not in k}, run / "step6" / "model.safetensors")
    db = tmp_path / "w.duckdb"
    args = ["ingest", run, "--probe", workdir / "docs.txt", "--n", 60, "--max-len", 32, "--db", db]
    result = cli(args)
    assert result.exit_code == 1
    runs = Warehouse(db).query("select checkpoint, status, error from runs order by checkpoint")
    status = dict(zip(runs["checkpoint"], runs["status"]))
    assert status == {"step0": "ok", "step1": "ok", "step2": "failed", "step4": "ok", "step6": "failed", "step8": "failed"}
    errors = dict(zip(runs["checkpoint"], runs["error"]))
    assert "step2" in errors["step2"] and errors["step8"] and "missing 4 weight tensor(s)" in errors["step6"]
    metrics = Warehouse(db).query("select distinct checkpoint from metrics order by 1")["checkpoint"].to_list()
    assert metrics == ["step0", "step1", "step4"]  # nothing half-written for the failures

    shutil.rmtree(run / "step8")
    shutil.rmtree(run / "step6")
    shutil.copytree(workdir / "my-run" / "step2", run / "step2", dirs_exist_ok=True)
    result = cli(args + ["--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert {c["checkpoint"]: c["status"] for c in summary["checkpoints"]} == {
        "step0": "skipped", "step1": "skipped", "step2": "ok", "step4": "skipped",
    }


def test_nan_features_fail_the_checkpoint_with_that_reason(tmp_path, workdir):
    import torch

    from geowh.ingest import IngestConfig, ingest
    from geowh.warehouse import Warehouse

    model = tiny_model()
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.fill_(float("inf"))
    model.save_pretrained(tmp_path / "broken" / "step1")
    tokenizer().save_pretrained(tmp_path / "broken" / "step1")
    summary = ingest(tmp_path / "broken", IngestConfig(probe=str(workdir / "docs.txt"), n=20, max_len=16), db=tmp_path / "w.duckdb")
    assert summary.failed == 1
    error = Warehouse(tmp_path / "w.duckdb").query("select error from runs")["error"][0]
    assert "NaN or inf" in error


def test_subsets_layers_poolings_saved_features_and_extra_measurements(workdir, tmp_path):
    from geowh.ingest import IngestConfig, Measurement, Selection, ingest
    from geowh.warehouse import Warehouse

    seen = []

    def count_layers(loaded, ref, config):
        seen.append((ref.label, loaded.n_layers, config.subsets))
        return {"metrics": [{"model": ref.model, "checkpoint": ref.label, "probe": None, "layer": None,
                             "pooling": None, "metric": "n_layers", "value": float(loaded.n_layers)}]}

    db = tmp_path / "w.duckdb"
    summary = ingest(
        workdir / "my-run", IngestConfig(probe=str(workdir / "docs.txt"), n=90, max_len=32, layers="all",
                                         pooling="last,mean", subsets=3, save_features=str(tmp_path / "features")),
        Selection("step0,step4"), db=db,
        measurements=[Measurement("count_layers", count_layers, {"version": 1})],
    )
    assert summary.count("ok") == 2 and seen == [("step0", 2, 3), ("step4", 2, 3)]
    wh = Warehouse(db)
    spectra = wh.query("select layer, pooling, n_samples from spectra where checkpoint = 'step0' order by all")
    assert spectra.rows() == [(layer, p, 90) for layer in (0, 1, 2) for p in ("last", "mean")]
    row = wh.query(
        "select value, stderr, params from metrics where checkpoint='step0' and layer=2 and pooling='last' and metric='rankme'"
    ).row(0)
    params = json.loads(row[2])
    assert params["subsets"] == 3 and row[0] == pytest.approx(np.mean(params["subset_values"]))
    assert row[1] == pytest.approx(np.std(params["subset_values"], ddof=1) / np.sqrt(3))
    extra = wh.query("select value, run_id from metrics where metric = 'n_layers' and checkpoint = 'step4'").row(0)
    run = wh.query("select run_id from runs where checkpoint = 'step4' and status = 'ok'")["run_id"][0]
    assert extra == (2.0, run)  # the measurement's rows joined the checkpoint's run
    saved = np.load(tmp_path / "features" / "my-run" / "step0" / "layer2-last.npy")
    assert saved.shape == (90, 64)


def test_subset_means_and_standard_errors_equal_an_independent_computation(workdir, tmp_path):
    from geowh.ingest import IngestConfig, Selection, ingest
    from geowh.spectrum_math import compute_metrics
    from geowh.warehouse import Warehouse

    k, m, seed = 4, 120, 3
    db = tmp_path / "w.duckdb"
    ingest(workdir / "my-run", IngestConfig(probe=str(workdir / "docs.txt"), n=m, max_len=32, seed=seed, subsets=k,
                                            save_features=str(tmp_path / "f")), Selection("step2"), db=db)
    features = np.load(tmp_path / "f" / "my-run" / "step2" / "layer2-last.npy").astype(np.float64)  # (m, d)
    # The parts are the probe's rows dealt out by a permutation from --seed (geowh's documented split).
    part_of = np.random.default_rng(seed).permutation(m) % k
    per_part = []
    for j in range(k):
        rows = features[part_of == j]
        lam = np.linalg.eigvalsh(np.cov(rows, rowvar=False, bias=True))[::-1]
        # The spectrum PCA of the part gives: min(rows, d) values, numerical noise (matrix_rank's floor) as 0.
        lam = np.where(lam > lam[0] * lam.size * np.finfo(float).eps, lam, 0.0)[: min(rows.shape)]
        per_part.append({v.metric: v.value for v in compute_metrics(lam)})
    stored = Warehouse(db).query("select metric, value, stderr from metrics where checkpoint = 'step2'")
    compared = set()
    for metric, value, stderr in stored.iter_rows():
        xs = np.array([part[metric] for part in per_part])
        if np.isnan(xs).any():
            continue
        compared.add(metric)
        assert value == pytest.approx(xs.mean(), rel=1e-6, abs=1e-9), metric
        assert stderr == pytest.approx(xs.std(ddof=1) / np.sqrt(k), rel=1e-5, abs=1e-9), metric
    assert {"rankme", "alpha_req"} <= compared


def test_a_checkpoint_error_in_a_measurement_fails_its_checkpoint_and_leaves_no_rows(workdir, tmp_path):
    from geowh.errors import CheckpointError
    from geowh.ingest import IngestConfig, Selection, ingest
    from geowh.warehouse import Warehouse

    def explode(loaded, ref, config):
        if ref.label == "step1":
            raise CheckpointError("index missing")
        return {}

    db = tmp_path / "w.duckdb"
    summary = ingest(workdir / "my-run", IngestConfig(probe=str(workdir / "docs.txt"), n=30, max_len=16),
                     Selection("step1,step2"), db=db, measurements=[explode])
    assert [c["status"] for c in summary.checkpoints] == ["failed", "ok"]  # the run went on
    wh = Warehouse(db)
    assert wh.query("select count(*) as n from metrics where checkpoint = 'step1'")["n"][0] == 0
    assert wh.query("select error from runs where checkpoint = 'step1'")["error"][0] == "index missing"


def test_a_bug_in_a_measurement_keeps_its_traceback_and_is_recorded(workdir, tmp_path):
    from geowh.ingest import IngestConfig, Selection, ingest
    from geowh.warehouse import Warehouse

    def buggy(loaded, ref, config):
        raise ValueError("a bug, not a bad checkpoint")

    db = tmp_path / "w.duckdb"
    with pytest.raises(ValueError, match="a bug") as raised:
        ingest(workdir / "my-run", IngestConfig(probe=str(workdir / "docs.txt"), n=30, max_len=16),
               Selection("step1,step2"), db=db, measurements=[buggy])
    assert raised.traceback[-1].name == "buggy"  # the frame that raised, not a rewrapped error
    runs = Warehouse(db).query("select checkpoint, status, error from runs")
    assert runs.to_dicts() == [{"checkpoint": "step1", "status": "failed",
                                "error": "ValueError: a bug, not a bad checkpoint"}]  # stopped at the first
    assert Warehouse(db).query("select count(*) as n from metrics")["n"][0] == 0


def test_the_hub_path_runs_offline_against_a_local_hub_cache(workdir, tmp_path):
    cache = save_hub_cache(tmp_path / "hub", "tiny-org/tiny-pythia", ["step0", "step1000"])
    script = f"""
import json
from geowh.ingest import IngestConfig, ingest
from geowh.ingest.sources.series import resolve_series
series = resolve_series("hf:tiny-org/tiny-pythia")
summary = ingest("hf:tiny-org/tiny-pythia", IngestConfig(probe={str(workdir / 'docs.txt')!r}, n=40, max_len=32),
                 db={str(tmp_path / 'w.duckdb')!r}, evict=True)
print(json.dumps({{"listed": [r.label for r in series.checkpoints], "summary": summary.to_dict()}}))
"""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    refs = cache / "models--tiny-org--tiny-pythia" / "refs"
    commits = {f"step{s}": (refs / f"step{s}").read_text().strip() for s in (0, 1000)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1 and done.stderr == ""  # the library draws nothing
    out = json.loads(done.stdout)
    assert out["listed"] == ["step0", "step1000"]
    assert [c["status"] for c in out["summary"]["checkpoints"]] == ["ok", "ok"]
    from geowh.warehouse import Warehouse

    rows = Warehouse(tmp_path / "w.duckdb").query("select step, source from checkpoints order by step").rows()
    assert rows == [(0, "hf://tiny-org/tiny-pythia@step0"), (1000, "hf://tiny-org/tiny-pythia@step1000")]
    runs = Warehouse(tmp_path / "w.duckdb").query("select checkpoint, hub_commit from runs").rows()
    assert dict(runs) == commits and all(len(c) == 40 for c in commits.values())  # the resolved commit of each revision
    prints = Warehouse(tmp_path / "w.duckdb").query("select checkpoint, fingerprint from checkpoints").rows()
    assert dict(prints) == commits  # a hub checkpoint's content is its commit
    assert Warehouse(tmp_path / "w.duckdb").query("select source from models").item() == "hf://tiny-org/tiny-pythia"
    snapshots = cache / "models--tiny-org--tiny-pythia" / "snapshots"
    assert not snapshots.exists() or not any(snapshots.iterdir())  # --evict emptied the cache


def test_loss_stores_the_probes_next_token_loss_from_the_same_forward(workdir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from geowh.ingest import IngestConfig, Selection, ingest
    from geowh.warehouse import Warehouse

    db = tmp_path / "w.duckdb"
    summary = ingest(workdir / "my-run", IngestConfig(probe=str(workdir / "docs.txt"), n=24, max_len=24, loss=True),
                     Selection("step1"), db=db)
    assert summary.count("ok") == 1
    got = Warehouse(db).query("select value, layer from metrics where metric = 'probe_loss'").row(0)

    tok = tokenizer()
    docs = [d for d in (workdir / "docs.txt").read_text().splitlines() if d.strip()]
    ids = [s[:24] for s in (tok(d, truncation=True, max_length=33)["input_ids"] for d in docs) if len(s) > 32]
    ids = [ids[i] for i in np.sort(np.random.default_rng(0).choice(len(ids), 24, replace=False))]
    lm = AutoModelForCausalLM.from_pretrained(workdir / "my-run" / "step1").eval()
    with torch.inference_mode():
        total = sum(float(lm(input_ids=torch.tensor([s]), labels=torch.tensor([s])).loss) * (len(s) - 1) for s in ids)
    assert got == (pytest.approx(total / sum(len(s) - 1 for s in ids), rel=1e-5), None)


def test_token_budget_batches_fill_the_budget_and_cover_every_sequence_once():
    from geowh.ingest.features.extract import plan_batches

    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 513, size=300).tolist()
    batches = plan_batches(lengths, token_budget=4096)
    assert sorted(i for b in batches for i in b) == list(range(300))
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first: an out-of-memory shows at once
    for b, width in zip(batches, widths):
        assert len(b) * width <= 4096  # padded tokens within the budget
    # Filled, not a fixed count: short sequences go many to a batch, long ones few.
    assert max(len(b) for b in batches) > 4 * len(batches[0])
    assert sum(len(b) * w for b, w in zip(batches, widths)) / (4096 * len(batches)) > 0.8


def test_token_budget_extraction_equals_one_sequence_at_a_time(monkeypatch):
    from geowh.ingest.features import extract

    model = tiny_model().base_model
    d = model.config.hidden_size
    # A CPU batch holds at most CPU_BATCH_ELEMENTS residual-stream elements: 120 tokens here.
    monkeypatch.setattr(extract, "CPU_BATCH_ELEMENTS", 120 * d)
    rng = np.random.default_rng(2)
    ids = [rng.integers(2, 50000, size=int(k)).tolist() for k in rng.integers(1, 60, size=20)]
    out, sizes = np.zeros((len(ids), d)), []
    for batch in extract.extract_features(model, ids, pad_id=0, layers=[2], poolings=["last"]):
        sizes.append(len(batch.indices))
        assert len(batch.indices) * max(len(ids[i]) for i in batch.indices) <= 120
        out[batch.indices] = batch.features[(2, "last")].numpy()
    assert len(set(sizes)) > 1 and max(sizes) > 1  # batches sized by tokens, not by count
    assert np.abs(out - _features_one_by_one(model, ids)).max() <= 1e-5


def test_a_checkpoint_loads_with_sdpa_attention(workdir):
    from geowh.ingest.sources.models import load_checkpoint
    from geowh.ingest.sources.series import resolve_series

    series = resolve_series(str(workdir / "my-run"))
    loaded = load_checkpoint(series.checkpoints[0], device="cpu")
    assert loaded.model.config._attn_implementation == "sdpa"


@pytest.mark.gpu
def test_bf16_token_budget_extraction_on_a_gpu_matches_fp32_one_at_a_time():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from geowh.ingest.features.extract import extract_features
    from geowh.ingest.features.spectrum import Covariance

    model = tiny_model().base_model
    rng = np.random.default_rng(3)
    ids = [rng.integers(2, 50000, size=int(k)).tolist() for k in rng.integers(1, 60, size=40)]
    ref = _features_one_by_one(model, ids)
    gpu = model.to("cuda", torch.bfloat16)
    assert gpu.config._attn_implementation == "sdpa"
    out, cov = np.zeros_like(ref), Covariance(ref.shape[1])
    for batch in extract_features(gpu, ids, pad_id=0, layers=[2], poolings=["last"]):
        f = batch.features[(2, "last")]  # (batch, d) bf16 on the GPU
        cov.update(f)
        out[batch.indices] = f.float().cpu().numpy()
    assert cov.device.startswith("cuda")  # covariance accumulated on the device
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()  # bf16 rounding, nothing more


def test_an_executor_plugs_into_the_engine_and_the_driver_alone_writes(workdir, tmp_path):
    """A stand-in for a distributed executor: every job handed out first, results back in reverse."""
    from geowh.ingest import IngestConfig, Selection
    from geowh.ingest.engine.executors import Serial
    from geowh.ingest.engine.plan import plan_ingest
    from geowh.ingest.engine.run import run
    from geowh.warehouse import Warehouse

    class AllAtOnceReversed(Serial):
        def __init__(self):
            self.running_when_handed_out = []

        def map(self, work, jobs, started):
            for job in jobs:
                started(job)
            self.running_when_handed_out = wh.query("select checkpoint, status from runs order by checkpoint").rows()
            return (work(job) for job in reversed(jobs))

    wh = Warehouse(tmp_path / "w.duckdb")
    plan = plan_ingest(str(workdir / "my-run"), IngestConfig(probe=str(workdir / "docs.txt"), n=30, max_len=16),
                       Selection("step1,step2"))
    executor = AllAtOnceReversed()
    summary = run(plan, wh, executor=executor)
    assert executor.running_when_handed_out == [("step1", "running"), ("step2", "running")]
    assert [(c["checkpoint"], c["status"]) for c in summary.checkpoints] == [("step1", "ok"), ("step2", "ok")]
    assert wh.query("select checkpoint, status from runs order by checkpoint").rows() == [("step1", "ok"), ("step2", "ok")]
    assert [c["status"] for c in run(plan, wh, executor=Serial()).checkpoints] == ["skipped", "skipped"]
