"""Geometry from inside training: the HF Trainer callback, the probe for custom loops, Lightning."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tiny import tiny_config, tokenizer, write_docs

N, MAX_LEN, SEQ = 48, 64, 32
STEPS, EVERY = 30, 10


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: on a busy machine OpenMP's spinning threads make them many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dataset(tok, count: int = 160):
    """Fixed-length causal-LM examples cut from the stdlib docstrings."""
    import torch
    from tiny import english_docs

    ids = tok("\n".join(english_docs(400)))["input_ids"]
    rows = [ids[i * SEQ : (i + 1) * SEQ] for i in range(count)]
    return [{"input_ids": torch.tensor(r), "labels": torch.tensor(r)} for r in rows]


def _train(out, probe_file, db, *, callback: bool):
    """30 steps of a tiny GPT-NeoX (with dropout, so training draws random numbers), checkpoints every 10."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from geowh.integrations import GeometryCallback

    tok = tokenizer()
    torch.manual_seed(0)
    config = tiny_config(layers=2, d=32, heads=2)
    config.hidden_dropout = config.attention_dropout = 0.1
    model = AutoModelForCausalLM.from_config(config)
    args = TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=3e-3,
        save_strategy="steps", save_steps=EVERY, save_only_model=True, logging_steps=5, report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    callbacks = [GeometryCallback(probe_file, db=db, every=EVERY, n=N, max_len=MAX_LEN, seq_len=SEQ)] if callback else []
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(tok), data_collator=default_data_collator,
                      processing_class=tok, callbacks=callbacks)
    trainer.train()
    return trainer, callbacks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same training with and without the callback."""
    root = tmp_path_factory.mktemp("live")
    probe_file = write_docs(root / "docs.txt", limit=200)
    with_cb, callbacks = _train(root / "with-callback", probe_file, root / "live.duckdb", callback=True)
    without, _ = _train(root / "without", probe_file, None, callback=False)
    return root, probe_file, with_cb, without, callbacks[0]


def test_training_with_the_callback_ends_in_the_same_weights_as_without(runs):
    _, _, with_cb, without, callback = runs
    assert [m["step"] for m in callback.measured] == [10, 20, 30]
    a, b = with_cb.model.state_dict(), without.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key
    assert with_cb.model.training == without.model.training


def test_the_callbacks_rows_equal_an_ingest_of_the_saved_checkpoints(runs):
    from geowh.ingest.config import IngestConfig, Selection
    from geowh.ingest.engine.run import ingest
    from geowh.warehouse import Warehouse

    root, probe_file, *_ = runs
    summary = ingest(root / "with-callback", IngestConfig(probe=str(probe_file), n=N, max_len=MAX_LEN, device="cpu"),
                     Selection(name="with-callback"), db=root / "ingested.duckdb")
    assert summary.count("ok") == 3
    query = ("SELECT c.step, m.probe, m.layer, m.pooling, m.metric, m.value, r.config_key FROM metrics m "
             "JOIN checkpoints c USING (model, checkpoint) JOIN runs r USING (run_id) "
             "WHERE r.status = 'ok' ORDER BY ALL")
    live = Warehouse(root / "live.duckdb").query(query)
    ingested = Warehouse(root / "ingested.duckdb").query(query)
    assert live.height == ingested.height > 0
    assert sorted(set(live["step"])) == [10, 20, 30]
    for column in ("step", "probe", "layer", "pooling", "metric", "config_key"):
        assert live[column].to_list() == ingested[column].to_list(), column
    assert np.allclose(live["value"].to_numpy(), ingested["value"].to_numpy(), rtol=1e-5, atol=1e-5, equal_nan=True)
    spectra = "SELECT eigenvalues FROM spectra JOIN checkpoints USING (model, checkpoint) ORDER BY step"
    for a, b in zip(Warehouse(root / "live.duckdb").query(spectra)["eigenvalues"],
                    Warehouse(root / "ingested.duckdb").query(spectra)["eigenvalues"]):
        assert np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-4, atol=1e-6)


def test_the_callback_names_checkpoints_by_step_with_tokens_and_logs_rankme_to_the_trainer(runs):
    from geowh.warehouse import Warehouse

    root, _, with_cb, *_ = runs
    checkpoints = Warehouse(root / "live.duckdb").query(
        "SELECT model, checkpoint, step, tokens, source FROM checkpoints ORDER BY step"
    ).to_dicts()
    assert [c["checkpoint"] for c in checkpoints] == ["step10", "step20", "step30"]
    assert {c["model"] for c in checkpoints} == {"with-callback"}
    assert [c["tokens"] for c in checkpoints] == [s * 4 * SEQ for s in (10, 20, 30)]
    logged = [h for h in with_cb.state.log_history if "rankme" in h]
    assert [h["step"] for h in logged] == [10, 20, 30]
    assert all("loss" in h and h["alpha_req"] > 0 for h in logged)


@pytest.mark.parametrize(("strategy", "evaluations"), [("steps", 2), ("epoch", 2)])
def test_a_reporting_callback_sees_rankme_in_the_logs_of_each_evaluation(tmp_path, strategy, evaluations):
    """W&B, MLflow and TensorBoard are callbacks placed before the user's: they must see the values."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from geowh.integrations import GeometryCallback

    seen = []

    class Reporter(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    tok = tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(layers=1, d=32, heads=2))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2,
                             eval_strategy=strategy, eval_steps=2, save_strategy="no", logging_steps=100,
                             report_to=[], use_cpu=True, disable_tqdm=True)
    data = _dataset(tok, 4)  # two steps per epoch
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:2],
                      data_collator=default_data_collator, processing_class=tok, callbacks=[Reporter()])
    trainer.add_callback(GeometryCallback(write_docs(tmp_path / "docs.txt", limit=60), n=16, max_len=32))
    trainer.train()
    measured = [logs for logs in seen if "rankme" in logs]
    assert len(measured) == evaluations  # default: at each evaluation (steps 2 and 4)
    assert all(np.isfinite(logs["rankme"]) and np.isfinite(logs["alpha_req"]) for logs in measured)


def test_the_probe_measures_a_custom_loop_and_writes_the_rows_of_an_ingest(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from geowh.ingest.config import IngestConfig
    from geowh.ingest.engine.run import ingest
    from geowh.integrations import GeometryProbe
    from geowh.warehouse import Warehouse

    docs = write_docs(tmp_path / "docs.txt", limit=100)
    config = tiny_config(layers=2, d=32, heads=2)
    config.hidden_dropout = 0.5  # features measured in train mode would differ from an ingest's
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    probe = GeometryProbe(tokenizer(), docs, db=tmp_path / "live.duckdb", name="loop", n=32, max_len=48,
                          layers="all")
    state = torch.get_rng_state()
    values = probe.measure(model, 100, tokens=1e6)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    assert values["step"] == 100 and values["checkpoint"] == "step100" and values["layer"] == 2
    assert values["rankme"] > 1 and values["alpha_req"] > 0

    folder = tmp_path / "loop" / "step100"
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    ingest(tmp_path / "loop", IngestConfig(probe=str(docs), n=32, max_len=48, layers="all", device="cpu"),
           db=tmp_path / "ingested.duckdb")
    query = "SELECT checkpoint, probe, layer, metric, value FROM metrics ORDER BY layer, metric"
    live, ingested = Warehouse(tmp_path / "live.duckdb").query(query), Warehouse(tmp_path / "ingested.duckdb").query(query)
    assert live.drop("value").equals(ingested.drop("value"))
    assert np.allclose(live["value"].to_numpy(), ingested["value"].to_numpy(), rtol=1e-5, atol=1e-5, equal_nan=True)
    runs = "SELECT config_key, status FROM runs"
    assert Warehouse(tmp_path / "live.duckdb").query(runs).equals(Warehouse(tmp_path / "ingested.duckdb").query(runs))


def test_importing_the_integrations_needs_neither_the_trainer_nor_lightning():
    code = (
        "import sys, geowh.integrations as g\n"
        "assert 'transformers' not in sys.modules and 'lightning' not in sys.modules, sorted(sys.modules)\n"
        "assert set(g.__all__) == {'GeometryProbe', 'GeometryCallback', 'GeometryLightningCallback'}\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_lightning_callback_logs_the_geometry_of_the_module_it_trains(tmp_path):
    pytest.importorskip("lightning")
    import lightning.pytorch as L
    import torch
    from tiny import tiny_model

    from geowh.integrations import GeometryLightningCallback
    from geowh.warehouse import Warehouse

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_model(layers=1, d=32, heads=2).train()

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    tok = tokenizer()
    data = torch.stack([row["input_ids"] for row in _dataset(tok, 16)])
    callback = GeometryLightningCallback(tok, write_docs(tmp_path / "docs.txt", limit=60), db=tmp_path / "w.duckdb",
                                         name="lit", every=2, n=16, max_len=32, tokens_per_step=4 * SEQ)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    assert [m["step"] for m in callback.measured] == [2, 4]
    assert {"rankme", "alpha_req"} <= set(trainer.callback_metrics)
    rows = Warehouse(tmp_path / "w.duckdb").query("SELECT checkpoint, tokens FROM checkpoints ORDER BY step")
    assert rows.to_dicts() == [{"checkpoint": "step2", "tokens": 2 * 4 * SEQ}, {"checkpoint": "step4", "tokens": 4 * 4 * SEQ}]


def test_the_readme_shows_the_three_ways_of_a_live_run():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Live runs") :]
    section = section[: section.index("\n### ", 5)]
    for way in ("geowh watch ", "GeometryCallback(", "GeometryProbe(", ".measure(model, step"):
        assert way in section, way


def _histograms(logdir) -> dict[int, int]:
    """{step: number of values} of the geowh spectrum histograms in a TensorBoard log folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from geowh.integrations.probe import SPECTRUM_TAG

    found = {}
    for events in sorted(p.parent for p in logdir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"histograms": 0})
        acc.Reload()
        if SPECTRUM_TAG in acc.Tags()["histograms"]:
            found.update({e.step: int(e.histogram_value.num) for e in acc.Histograms(SPECTRUM_TAG)})
    return found


@pytest.mark.slow
def test_the_callback_logs_the_eigenspectrum_to_tensorboard_beside_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from geowh.integrations import GeometryCallback

    tok = tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(layers=1, d=32, heads=2))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, learning_rate=3e-3,
        save_strategy="no", logging_steps=2, report_to=["tensorboard"],
        use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    callback = GeometryCallback(write_docs(tmp_path / "docs.txt", limit=80), every=2, n=40, max_len=32, seq_len=SEQ)
    Trainer(model=model, args=args, train_dataset=_dataset(tok, 16), data_collator=default_data_collator,
            processing_class=tok, callbacks=[callback]).train()
    positive = [sum(v > 0 for v in m["eigenvalues"]) for m in callback.measured]
    assert [m["step"] for m in callback.measured] == [2, 4] and min(positive) > 10
    assert _histograms(tmp_path / "out") == {2: positive[0], 4: positive[1]}  # the writer's folder: out/runs/…


@pytest.mark.slow
def test_the_lightning_callback_logs_the_eigenspectrum_to_tensorboard(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("tensorboard")
    import lightning.pytorch as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from tiny import tiny_model

    from geowh.integrations import GeometryLightningCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_model(layers=1, d=32, heads=2).train()

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    tok = tokenizer()
    data = torch.stack([row["input_ids"] for row in _dataset(tok, 8)])
    callback = GeometryLightningCallback(tok, write_docs(tmp_path / "docs.txt", limit=60), name="lit", every=2, n=40,
                                         max_len=32)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=TensorBoardLogger(str(tmp_path / "tb")),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback])
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    positive = sum(v > 0 for v in callback.measured[0]["eigenvalues"])
    assert positive > 10 and _histograms(tmp_path / "tb") == {2: positive}


def _small_trainer(tmp_path, model, tok, callback, steps=6):
    """A real HF Trainer over `model` for `steps` steps of 2 sequences whose ids the model embeds."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    vocab = model.get_input_embeddings().num_embeddings
    data = [{"input_ids": r["input_ids"] % vocab, "labels": r["input_ids"] % vocab} for r in _dataset(tok, 2 * steps)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=2,
                             save_strategy="no", logging_steps=100, report_to=[], use_cpu=True, disable_tqdm=True)
    torch.manual_seed(0)
    return Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
                   processing_class=tok, callbacks=[callback])


@pytest.mark.slow
def test_a_tokenizer_larger_than_the_model_is_refused_at_train_begin_before_any_step(tmp_path):
    # issue 18: the Pythia tokenizer (50k ids) with a 1,000-token model killed the training with
    # IndexError at the first measurement, after steps were spent, and recorded nothing
    from tiny import tiny_model

    from geowh.errors import InputError
    from geowh.integrations import GeometryCallback

    model = tiny_model(layers=1, d=32, heads=2, vocab=1000).train()
    callback = GeometryCallback(write_docs(tmp_path / "docs.txt", limit=60), db=tmp_path / "w.duckdb", every=2,
                                n=16, max_len=32)
    trainer = _small_trainer(tmp_path, model, tokenizer(), callback)
    with pytest.raises(InputError, match="the model embeds only 1,000 tokens.*the tokenizer the model was built for"):
        trainer.train()
    assert trainer.state.global_step == 0 and callback.measured == []


@pytest.mark.slow
def test_a_measurement_that_fails_later_is_recorded_and_logged_and_the_training_goes_on(tmp_path, monkeypatch, caplog):
    import logging

    from tiny import tiny_model

    import geowh.ingest.measurements.geometry as engine
    from geowh.integrations import GeometryCallback
    from geowh.warehouse import Warehouse

    geometry, calls = engine.geometry_rows, []

    def second_fails(*args, **kwargs):  # a bug inside the measurement, of a type geowh does not expect
        calls.append(1)
        if len(calls) == 2:
            raise IndexError("index out of range in self")
        return geometry(*args, **kwargs)

    monkeypatch.setattr(engine, "geometry_rows", second_fails)
    model = tiny_model(layers=1, d=32, heads=2).train()
    callback = GeometryCallback(write_docs(tmp_path / "docs.txt", limit=60), db=tmp_path / "w.duckdb", every=2,
                                n=16, max_len=32)
    trainer = _small_trainer(tmp_path, model, tokenizer(), callback)
    with caplog.at_level(logging.WARNING, logger="geowh.integrations.trainer"):
        trainer.train()
    assert trainer.state.global_step == 6  # the failure at step 4 stopped nothing
    assert [m["step"] for m in callback.measured] == [2, 6]
    runs = Warehouse(tmp_path / "w.duckdb").query("SELECT checkpoint, status, error FROM runs ORDER BY started_at")
    assert runs["checkpoint"].to_list() == ["step2", "step4", "step6"]
    assert runs["status"].to_list() == ["ok", "failed", "ok"]
    assert "IndexError: index out of range in self" in runs["error"][1]
    assert any("step 4 failed, training goes on" in r.getMessage() for r in caplog.records)


def test_the_probe_refuses_a_negative_or_fractional_step_and_records_nothing(tmp_path):
    from tiny import tiny_model

    from geowh.errors import InputError
    from geowh.integrations import GeometryProbe
    from geowh.warehouse import Warehouse

    probe = GeometryProbe(tokenizer(), write_docs(tmp_path / "docs.txt", limit=40), db=tmp_path / "w.duckdb",
                          name="loop", n=8, max_len=16)
    model = tiny_model(layers=1, d=32, heads=2)
    for step in (-5, 1.5, float("nan"), "7"):
        with pytest.raises(InputError, match="a step is a whole number ≥ 0"):
            probe.measure(model, step)
    with pytest.raises(InputError, match="tokens"):
        probe.measure(model, 3, tokens=-1)
    assert Warehouse(tmp_path / "w.duckdb").query("SELECT count(*) AS n FROM runs")["n"].item() == 0
    assert probe.measure(model, 3.0)["checkpoint"] == "step3"  # a whole float is a step


def test_the_probe_refuses_a_model_whose_positions_are_fewer_than_its_sequences_or_whose_weights_are_not_loaded(tmp_path):
    import torch
    from tiny import tiny_model

    from geowh.errors import InputError
    from geowh.integrations import GeometryProbe

    docs = write_docs(tmp_path / "docs.txt", limit=40)
    from transformers import AutoModelForCausalLM

    config = tiny_config("gpt2", layers=1, d=32, heads=2)
    config.n_positions = 16  # learned absolute positions: a 17th token has no embedding
    short = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(InputError, match="sequences of 32 tokens, but the model takes at most 16 positions: pass max_len=16"):
        GeometryProbe(tokenizer(), docs, name="loop", n=8, max_len=32, model=short)
    assert GeometryProbe(tokenizer(), docs, name="loop", n=8, max_len=16, model=short).measure(short, 1)["rankme"] > 0
    with torch.device("meta"):
        ghost = tiny_model(layers=1, d=32, heads=2)
    with pytest.raises(InputError, match="meta device"):
        GeometryProbe(tokenizer(), docs, name="loop", n=8, max_len=16, model=ghost)


def test_a_reporter_that_fails_to_take_the_spectrum_is_skipped_and_logged(caplog):
    import logging

    from geowh.integrations.probe import log_spectrum

    class Broken:
        def add_histogram(self, *args):
            raise OSError("the event file's disk is full")

    class Writer:
        def __init__(self):
            self.seen = []

        def add_histogram(self, tag, values, step):
            self.seen.append((tag, len(values), step))

        def flush(self):
            pass

    broken, writer = type("TensorBoardCallback", (), {"tb_writer": Broken()})(), Writer()
    ok = type("TensorBoardCallback", (), {"tb_writer": writer})()
    with caplog.at_level(logging.ERROR, logger="geowh.integrations.probe"):
        assert log_spectrum([broken, ok], [4.0, 2.0, 1.0, 0.0], step=7) == ["tensorboard"]
    assert writer.seen == [("geowh/log10_eigenvalue_ratio", 3, 7)]
    assert any("could not be logged" in r.getMessage() for r in caplog.records)
