"""A run is never mistaken for another: a series records where it came from and what each
checkpoint's weights are, and another source under a stored model name is refused."""

from __future__ import annotations

import shutil

import duckdb
import pytest
from tiny import save_series, write_docs

from geowh.errors import InputError
from geowh.ingest import IngestConfig, Selection, ingest
from geowh.warehouse import Warehouse

pytestmark = pytest.mark.slow  # tiny ingests: 10-20 s each on the loaded 2-core machine


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """other/run and base/run: two trainings of one architecture (same folder name, other weights)."""
    root = tmp_path_factory.mktemp("sources")
    save_series(root / "other" / "run", steps=(0, 1), seed=0)
    save_series(root / "base" / "run", steps=(0, 1), seed=1)
    write_docs(root / "docs.txt", limit=200)
    return root


def _ingest(runs, folder, db, **options):
    config = IngestConfig(probe=str(runs / "docs.txt"), n=40, max_len=32)
    return [c["status"] for c in ingest(str(folder), config, db=db, **options).checkpoints]


def test_another_folder_with_the_same_name_is_refused_naming_both_and_the_fix(runs, tmp_path, cli):
    db = tmp_path / "w.duckdb"
    assert _ingest(runs, runs / "other" / "run", db) == ["ok", "ok"]
    for force in (False, True):  # --force used to replace the first model's rows with the second's
        with pytest.raises(InputError) as refused:
            _ingest(runs, runs / "base" / "run", db, force=force)
        message = str(refused.value)
        assert str(runs / "other" / "run") in message and str(runs / "base" / "run") in message and "--name" in message
    assert Warehouse(db).query("SELECT count(*) AS n FROM runs").item() == 2  # nothing of base/run was written

    shown = cli(["ingest", runs / "base" / "run", "--probe", runs / "docs.txt", "--n", "40", "--max-len", "32",
                 "--db", db])
    assert shown.exit_code == 1 and "Traceback" not in shown.output and "--name" in shown.output

    config = IngestConfig(probe=str(runs / "docs.txt"), n=40, max_len=32)
    named = ingest(str(runs / "base" / "run"), config, Selection(name="base-run"), db=db)
    assert [c["status"] for c in named.checkpoints] == ["ok", "ok"]
    sources = dict(Warehouse(db).query("SELECT model, source FROM models").rows())
    assert sources == {"run": (runs / "other" / "run").resolve().as_uri(), "base-run": (runs / "base" / "run").resolve().as_uri()}


def test_the_same_source_resumes_and_each_checkpoint_records_its_weights(runs, tmp_path):
    db = tmp_path / "w.duckdb"
    assert _ingest(runs, runs / "other" / "run", db) == ["ok", "ok"]
    assert _ingest(runs, runs / "other" / "run", db) == ["skipped", "skipped"]
    assert _ingest(runs, runs / "other" / "run" / "step1", db) == ["skipped"]  # one checkpoint of the same run
    prints = Warehouse(db).query("SELECT checkpoint, fingerprint FROM checkpoints ORDER BY checkpoint")
    assert prints["fingerprint"].str.len_chars().to_list() == [16, 16]
    assert prints["fingerprint"][0] != prints["fingerprint"][1]


def test_a_checkpoint_whose_weights_changed_in_place_is_refused_unless_forced(runs, tmp_path):
    db = tmp_path / "w.duckdb"
    run = tmp_path / "run"
    shutil.copytree(runs / "other" / "run", run)
    assert _ingest(runs, run, db) == ["ok", "ok"]
    shutil.rmtree(run / "step1")
    shutil.copytree(runs / "base" / "run" / "step1", run / "step1")  # a new training wrote into the same folder
    with pytest.raises(InputError, match=r"step1 has changed since it was stored.*--name.*--force"):
        _ingest(runs, run, db)
    assert _ingest(runs, run, db, force=True) == ["ok", "ok"]
    assert _ingest(runs, run, db) == ["skipped", "skipped"]


def test_rows_stored_before_sources_were_recorded_still_refuse_another_source(runs, tmp_path):
    db = tmp_path / "w.duckdb"
    assert _ingest(runs, runs / "other" / "run", db) == ["ok", "ok"]
    with duckdb.connect(str(db)) as con:  # as a warehouse of migration 5 left them, then migrated
        con.execute("UPDATE models SET source = NULL")
        con.execute("UPDATE checkpoints SET fingerprint = NULL")
    with pytest.raises(InputError, match="another source"):
        _ingest(runs, runs / "base" / "run", db)
    assert _ingest(runs, runs / "other" / "run", db) == ["skipped", "skipped"]
