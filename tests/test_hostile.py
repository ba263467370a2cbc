"""Hostile and careless input, round 2 (issue 18 items 5, 6, 8): every case ends in one line that
says what happened and what to do, exit 1 (130 for Ctrl-C), no traceback, no crash by a signal,
and an answer within seconds when the network is missing. bench/faults.py runs the same attacks
as a user does, each in a fresh process (`--hostile`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import PYTHIA_TOKENIZER, save_series, tokenizer, write_docs

GEOWH = [str(Path(sys.executable).with_name("geowh"))]
LONG = "x" * 300  # a file name over the 255 bytes every common file system allows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """./run (2 tiny GPT-NeoX checkpoints), docs.txt and a warehouse w.duckdb with a few rows."""
    from geowh.queries.imports import import_metrics
    from geowh.warehouse import Warehouse

    root = tmp_path_factory.mktemp("hostile")
    save_series(root / "run", steps=(0, 1))
    write_docs(root / "docs.txt", limit=60)
    (root / "t.csv").write_text("model,step,metric,value\nm,1,rankme,3.0\nm,2,rankme,4.0\n")
    import_metrics(Warehouse(root / "w.duckdb"), root / "t.csv")
    return root


def one_line(result, *words: str, code: int = 1) -> str:
    """The one error line of a CliRunner result, checked: exit code, no traceback, `words` in it."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "stopped"))]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- 5: bad input is one line ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_probe_longer_than_a_models_learned_positions_is_refused_naming_max_len(cli, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from geowh.ingest.features.extract import learned_positions

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=50304, n_embd=32, n_layer=1, n_head=2,
                                                        n_positions=16, eos_token_id=0, bos_token_id=0))
    model.save_pretrained(tmp_path / "run" / "step1")
    tokenizer().save_pretrained(tmp_path / "run" / "step1")
    assert learned_positions(model.base_model) == 16
    write_docs(tmp_path / "docs.txt", limit=40)
    result = cli(["ingest", tmp_path / "run", "--probe", tmp_path / "docs.txt", "--n", "8", "--max-len", "32",
                  "--db", tmp_path / "w.duckdb"])
    one_line(result, "16 positions", "--max-len 16")  # an IndexError deep in torch before


def test_rotary_models_have_no_learned_position_limit():
    from tiny import tiny_model

    from geowh.ingest.features.extract import learned_positions

    assert learned_positions(tiny_model("gpt-neox").base_model) is None


@pytest.mark.parametrize("args", [
    ["sql", "select 1", "--db", f"{LONG}.duckdb"],
    ["info", "--db", f"{LONG}.duckdb"],
    ["ingest", "./run", "--probe", "docs.txt", "--n", "8", "--db", f"{LONG}.duckdb"],
    ["export", LONG, "--db", "w.duckdb"],
    ["metrics", f"{LONG}.npy"],
    ["sql", "select 1", "--out", f"{LONG}.csv"],
], ids=["sql --db", "info", "ingest", "export", "metrics", "sql --out"])
def test_a_file_name_too_long_is_one_line_saying_to_shorten_it(cli, workdir, monkeypatch, args):
    monkeypatch.chdir(workdir)
    one_line(cli(args), "File name too long", "shorten")


@pytest.mark.parametrize("content, words", [
    ('{"text": 5}\n', ["is a int, not a string"]),
    ('{"text": ["a", "b"]}\n', ["is a list, not a string"]),
], ids=["number", "list"])
def test_a_jsonl_whose_text_is_not_a_string_is_one_line(cli, workdir, tmp_path, content, words):
    (tmp_path / "p.jsonl").write_text(content)
    one_line(cli(["ingest", workdir / "run", "--probe", tmp_path / "p.jsonl", "--db", tmp_path / "w.duckdb"]),
             "p.jsonl:1", *words)
    assert not (tmp_path / "w.duckdb").exists()


@pytest.mark.parametrize("command", ["probe", "corpus"])
def test_a_corrupt_parquet_probe_or_corpus_is_one_line(cli, workdir, tmp_path, command):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really a parquet file")
    if command == "probe":
        args = ["ingest", workdir / "run", "--probe", bad, "--db", tmp_path / "w.duckdb"]
    else:
        args = ["index", "build", bad, "--out", tmp_path / "idx", "--tokenizer", PYTHIA_TOKENIZER]
    one_line(cli(args), "bad.parquet", "not a readable Parquet file")


def test_a_parquet_text_column_of_numbers_is_one_line(cli, workdir, tmp_path):
    import polars as pl

    pl.DataFrame({"text": [1, 2, 3]}).write_parquet(tmp_path / "n.parquet")
    one_line(cli(["ingest", workdir / "run", "--probe", tmp_path / "n.parquet", "--db", tmp_path / "w.duckdb"]),
             "`text` column", "not strings")


@pytest.mark.parametrize("meta", ['{"tokenizer": "x", "tok', "[1, 2]", '{"tokens": 5}'],
                         ids=["truncated", "not an object", "fields missing"])
def test_a_damaged_index_meta_file_is_one_line_naming_the_rebuild(cli, tmp_path, meta):
    index = tmp_path / "idx"
    index.mkdir()
    (index / "geowh-index.json").write_text(meta)
    one_line(cli(["index", "query", index, "the cat"]), "geowh-index.json is damaged", "geowh index build")


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_save_features_pointing_at_a_file_is_refused_before_anything_is_computed(cli, workdir, tmp_path, where):
    (tmp_path / "feat").write_text("")
    target = tmp_path / "feat" if where == "file" else tmp_path / "feat" / "sub"
    started = time.monotonic()
    result = cli(["ingest", workdir / "run", "--probe", workdir / "docs.txt", "--n", "8",
                  "--save-features", target, "--db", tmp_path / "w.duckdb"])
    one_line(result, "--save-features", "a file, not a folder")
    assert not (tmp_path / "w.duckdb").exists() and time.monotonic() - started < 5  # before any checkpoint


def test_the_run_folder_vanishing_under_watch_is_one_line(tmp_path):
    from geowh.errors import InputError
    from geowh.ingest.engine.watch import watch

    run = tmp_path / "run"
    run.mkdir()

    def stop() -> bool:  # the first pause between two looks: the folder is deleted
        shutil.rmtree(run, ignore_errors=True)
        return False

    with pytest.raises(InputError, match="disappeared while being watched"):
        watch(run, interval=0.05, stop=stop, db=tmp_path / "w.duckdb")


def test_a_safetensors_header_that_is_not_an_object_is_no_crash_and_counts_as_written(tmp_path):
    import struct

    from geowh.ingest.engine.watch import checkpoint_ready

    folder = tmp_path / "step1"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    header = b"[1, 2, 3]"
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    # Not a half-written file (that would wait): a damaged one, which its ingest fails with the reason.
    assert checkpoint_ready(folder, settle=0, now=time.time() + 60)


# -- 5: files changing or unreadable under geowh -----------------------------------------------------


def test_local_weights_are_read_not_memory_mapped(workdir, monkeypatch):
    """A mapped file cut short by a writer kills the process with SIGBUS; a read one is an error."""
    from transformers import AutoModel

    from geowh.ingest.sources.models import load_checkpoint
    from geowh.ingest.sources.series import resolve_series

    seen = {}
    original = AutoModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(spy))
    ref = resolve_series(str(workdir / "run")).checkpoints[0]
    load_checkpoint(ref, device="cpu", dtype="float32").release()
    assert seen.get("disable_mmap") is True


def test_a_weight_file_changed_while_read_fails_its_checkpoint_naming_the_file(workdir, tmp_path, monkeypatch):
    from transformers import AutoModel

    from geowh.errors import CheckpointError
    from geowh.ingest.sources.models import load_checkpoint
    from geowh.ingest.sources.series import resolve_series

    shutil.copytree(workdir / "run" / "step0", tmp_path / "run" / "step0")
    weights = tmp_path / "run" / "step0" / "model.safetensors"
    original = AutoModel.from_pretrained.__func__

    def writer_meanwhile(cls, *args, **kwargs):
        loaded = original(cls, *args, **kwargs)
        weights.write_bytes(weights.read_bytes())  # a training saving over it while geowh read it
        os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
        return loaded

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(writer_meanwhile))
    ref = resolve_series(str(tmp_path / "run")).checkpoints[0]
    with pytest.raises(CheckpointError, match="model.safetensors changed while it was being read"):
        load_checkpoint(ref, device="cpu", dtype="float32")


@pytest.mark.slow
def test_an_unreadable_checkpoint_folder_fails_that_checkpoint_and_the_ingest_goes_on(cli, workdir, tmp_path,
                                                                                       monkeypatch):
    import geowh.ingest.sources.models as models

    stamps = models._stamps

    def denied(folder):  # root reads any folder, so the refusal is put in where geowh first lists one
        if folder.name == "step0":
            raise PermissionError(13, "Permission denied", str(folder))
        return stamps(folder)

    monkeypatch.setattr(models, "_stamps", denied)
    result = cli(["ingest", workdir / "run", "--probe", workdir / "docs.txt", "--n", "8", "--max-len", "16",
                  "--db", tmp_path / "w.duckdb", "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    entries = {e["checkpoint"]: e for e in json.loads(result.stdout)["checkpoints"]}
    assert entries["step1"]["status"] == "ok"
    assert entries["step0"]["status"] == "failed" and "Permission denied" in entries["step0"]["error"]
    assert "free space" not in result.output


def test_a_corrupt_config_json_is_named_not_blamed_on_the_tokenizer(cli, workdir, tmp_path):
    shutil.copytree(workdir / "run" / "step0", tmp_path / "run" / "step0")
    (tmp_path / "run" / "step0" / "config.json").write_text('{"model_type": ')
    result = cli(["ingest", tmp_path / "run", "--probe", workdir / "docs.txt", "--n", "8", "--db",
                  tmp_path / "w.duckdb", "--json"])
    (entry,) = json.loads(result.stdout)["checkpoints"]
    assert "config.json is not a JSON object" in entry["error"] and "tokenizer" not in entry["error"]


def test_an_offline_hub_checkpoint_not_in_the_cache_says_so_not_no_tokenizer(cli, workdir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = cli(["ingest", "hf:org/tiny", "--revisions", "step1", "--probe", workdir / "docs.txt", "--n", "8",
                  "--db", tmp_path / "w.duckdb", "--json"])
    (entry,) = json.loads(result.stdout)["checkpoints"]
    assert "not in the local hub cache" in entry["error"] and "no tokenizer" not in entry["error"]


# -- 6: offline answers fast -----------------------------------------------------------------------------


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A closed local port stands in for the hub: the same with or without a network."""
    from huggingface_hub import constants

    from geowh.ingest.sources.series import _hub_unreachable

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("GEOWH_HOME", str(tmp_path / "home"))  # no cached probe texts
    _hub_unreachable.cache_clear()
    yield
    _hub_unreachable.cache_clear()


@pytest.mark.parametrize("what", ["probe", "index tokenizer", "ingest tokenizer"])
def test_without_network_datasets_and_tokenizers_answer_in_one_line_at_once(cli, workdir, tmp_path, no_hub, what):
    if what == "probe":
        args = ["ingest", workdir / "run", "--probe", "fineweb", "--n", "8", "--db", tmp_path / "w.duckdb"]
    elif what == "index tokenizer":
        args = ["index", "build", workdir / "docs.txt", "--out", tmp_path / "idx", "--tokenizer", "EleutherAI/gpt-neox-20b"]
    else:  # a run without tokenizer files, given a hub tokenizer
        shutil.copytree(workdir / "run" / "step0", tmp_path / "run" / "step0",
                        ignore=shutil.ignore_patterns("tokenizer*"))
        args = ["ingest", tmp_path / "run", "--probe", workdir / "docs.txt", "--n", "8",
                "--tokenizer", "EleutherAI/gpt-neox-20b", "--db", tmp_path / "w.duckdb"]
    started = time.monotonic()
    one_line(cli(args), "cannot reach the Hugging Face hub", "HF_HUB_OFFLINE=1")
    assert time.monotonic() - started < 10  # 25 to 51 s of retries before


@pytest.mark.slow
def test_an_address_that_is_not_ray_prints_only_geowhs_line(workdir, tmp_path):
    pytest.importorskip("ray")
    import socket

    server = socket.create_server(("127.0.0.1", 0))  # accepts, then says nothing a Ray client understands
    port = server.getsockname()[1]
    try:
        result = subprocess.run([*GEOWH, "ingest", "./run", "--probe", "docs.txt", "--n", "8", "--db",
                                 str(tmp_path / "w.duckdb"), "--ray", f"127.0.0.1:{port}"],
                                cwd=workdir, capture_output=True, text=True, timeout=180,
                                env=os.environ | {"COLUMNS": "200", "NO_COLOR": "1"})
    finally:
        server.close()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --ray 127.0.0.1:")


# -- 8: messages that say what happened ------------------------------------------------------------------


def test_n_1_is_refused_saying_a_spectrum_needs_two_sequences(cli, workdir, tmp_path):
    line = one_line(cli(["ingest", workdir / "run", "--probe", workdir / "docs.txt", "--n", "1",
                         "--db", tmp_path / "w.duckdb"]), "--n 1", "at least 2")
    assert "Covariance" not in line and "update()" not in line


@pytest.mark.parametrize("lr", ["nan", "inf", "-1"])
def test_toy_with_a_learning_rate_that_is_not_a_positive_number_blames_the_learning_rate(cli, tmp_path, lr):
    line = one_line(cli(["toy", "--lr", lr, "--steps", "5", "--db", tmp_path / "w.duckdb"]), "lr")
    assert "fp16" not in line


def test_toy_that_diverges_says_so_and_not_fp16(cli, tmp_path):
    line = one_line(cli(["toy", "--lr", "1e6", "--steps", "50", "--db", tmp_path / "w.duckdb"]),
                    "diverged", "lower --lr")
    assert "fp16" not in line


@pytest.mark.parametrize("extra", [["--long"], ["--steps", "10"], ["runs/x"]], ids=["long", "steps", "folder"])
def test_demo_shipped_refuses_the_training_options_it_would_ignore(cli, tmp_path, extra):
    one_line(cli(["demo", "--shipped", *extra, "--db", tmp_path / "w.duckdb"]), "--shipped trains nothing")
    assert not (tmp_path / "w.duckdb").exists()


def test_migrate_refuses_a_truncated_file_instead_of_nothing_to_do(cli, workdir, tmp_path):
    cut = tmp_path / "cut.duckdb"
    data = (workdir / "w.duckdb").read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    one_line(cli(["migrate", "--db", cut]), "is truncated")
    assert cut.stat().st_size == len(data) // 3  # untouched


@pytest.mark.parametrize("reason", ["Permission denied", "Read-only file system"])
def test_a_warehouse_that_cannot_be_written_is_named_so_not_unreadable(cli, workdir, tmp_path, monkeypatch, reason):
    import duckdb

    connect = duckdb.connect

    def refusing(path, read_only=False, **kwargs):  # root writes anywhere: the OS's refusal is put in
        if not read_only:
            raise duckdb.IOException(f'IO Error: Cannot open file "{path}": {reason}')
        return connect(path, read_only=read_only, **kwargs)

    shutil.copy(workdir / "w.duckdb", tmp_path / "w.duckdb")
    monkeypatch.setattr(duckdb, "connect", refusing)
    line = one_line(cli(["import-metrics", tmp_path / "t.csv" if False else workdir / "t.csv", "--model", "other",
                         "--db", tmp_path / "w.duckdb"]), f"cannot be written: {reason}", "writable")
    assert "not a readable" not in line


@pytest.mark.parametrize("command", ["sql", "index"])
def test_ctrl_c_in_a_command_that_stores_nothing_does_not_claim_it_stored_something(cli, workdir, monkeypatch,
                                                                                       tmp_path, command):
    from geowh.signals import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted(signal.SIGINT)

    if command == "sql":
        monkeypatch.setattr("geowh.warehouse.Warehouse.sql", interrupted)
        args = ["sql", "select 1", "--db", workdir / "w.duckdb"]
    else:
        monkeypatch.setattr("geowh.index.build.build_index", interrupted)
        args = ["index", "build", workdir / "docs.txt", "--out", tmp_path / "idx", "--tokenizer", PYTHIA_TOKENIZER]
    line = one_line(cli(args), "stopped by SIGINT", "left nothing half-written", code=130)
    assert "what had finished is stored" not in line


# -- 5: a matrix too large for the memory is refused, never a crash in OpenBLAS ------------------------


def test_metrics_counts_the_matrix_held_in_memory_and_blas_buffers_before_computing(cli, tmp_path, monkeypatch):
    import numpy as np
    import polars as pl

    import geowh.ingest.features.spectrum as spectrum

    x = np.random.default_rng(0).standard_normal((3000, 400))
    pl.DataFrame(x).write_parquet(tmp_path / "f.parquet")  # read whole into memory, unlike a mapped .npy
    _, needed = spectrum.spectrum_bytes(3000, 400)
    # What the old estimate let through (the arrays fit in what is "available"), and OpenBLAS then
    # had no room for its own buffers: SIGSEGV inside a kernel.
    monkeypatch.setattr(spectrum, "available_bytes", lambda: needed + 2**20)
    line = one_line(cli(["metrics", tmp_path / "f.parquet"]), "needs about", "memory available")
    assert "f.parquet (3,000 x 400)" in line


def test_metrics_running_out_of_memory_midway_is_one_line(cli, tmp_path, monkeypatch):
    import numpy as np

    import geowh.ingest.features.spectrum as spectrum

    np.save(tmp_path / "f.npy", np.random.default_rng(0).standard_normal((300, 40)))

    def no_memory(self, features):
        raise MemoryError

    monkeypatch.setattr(spectrum.Covariance, "update", no_memory)
    one_line(cli(["metrics", tmp_path / "f.npy"]), "could give now")


def test_migrate_on_a_full_disk_is_the_one_full_disk_line(cli, workdir, tmp_path):
    import duckdb

    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True
    ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        old = disk / "w.duckdb"
        shutil.copy(workdir / "w.duckdb", old)
        con = duckdb.connect(str(old))
        con.execute("DELETE FROM schema_migrations WHERE version > 1")  # as an older geowh left it
        con.close()
        fd = os.open(disk / "fill", os.O_WRONLY | os.O_CREAT)  # the rest of the disk, unbuffered
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        one_line(cli(["migrate", "--db", old]), "is full", "free some space")  # a TransactionException before
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
