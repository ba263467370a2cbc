"""The warehouse: schema and migrations, transactional writes, read-only SQL, export."""

from __future__ import annotations

import json
import math

import duckdb
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geowh.errors import WarehouseError
from geowh.warehouse import Warehouse, canonical_model
from geowh.warehouse.schema import latest_version, migrations


def checkpoint_rows(model="m", checkpoint="step1", step=1, metrics=None):
    metrics = metrics or {"rankme": 3.0, "alpha_req": 0.9}
    return {
        "models": [{"model": model, "family": "local", "layers": 2, "d_model": 8}],
        "checkpoints": [{"model": model, "checkpoint": checkpoint, "step": step, "stage": "pretrain", "stage_order": 0}],
        "runs": [{"run_id": f"{model}-{checkpoint}", "kind": "geometry", "model": model, "checkpoint": checkpoint,
                  "status": "ok", "config": {"layers": "last"}}],
        "metrics": [
            {"model": model, "checkpoint": checkpoint, "probe": "p", "layer": 2, "pooling": "last",
             "metric": name, "value": value, "params": {"eps": 1e-7}, "run_id": f"{model}-{checkpoint}"}
            for name, value in metrics.items()
        ],
    }


def test_a_fresh_warehouse_has_every_migration_recorded(wh):
    wh.write(checkpoint_rows())
    recorded = wh.table("schema_migrations")
    assert recorded["version"].to_list() == [m.version for m in migrations()]
    assert wh.schema_version() == latest_version()


def test_every_column_in_schema_sql_has_a_comment_in_the_catalogue(wh):
    wh.write(checkpoint_rows())
    columns = wh.query(
        "SELECT table_name, column_name, comment FROM duckdb_columns() "
        "WHERE database_name = current_database() AND NOT internal "
        "AND table_name IN (SELECT table_name FROM duckdb_tables() WHERE database_name = current_database())"
    )
    missing = columns.filter(pl.col("comment").is_null() | (pl.col("comment") == ""))
    assert missing.height == 0, missing


def test_round_trip_returns_what_was_written(wh):
    wh.write(checkpoint_rows(metrics={"rankme": 12.5, "alpha_req": 1.25}))
    row = wh.trajectories(model="m").row(0, named=True)
    assert (row["step"], row["rankme"], row["alpha_req"], row["stage"]) == (1, 12.5, 1.25, "pretrain")
    params = wh.query("SELECT params FROM metrics WHERE metric = 'rankme'")["params"][0]
    assert json.loads(params) == {"eps": 1e-7}


def test_writing_the_same_checkpoint_again_replaces_its_rows(wh):
    wh.write(checkpoint_rows(metrics={"rankme": 1.0}))
    wh.write(checkpoint_rows(metrics={"rankme": 2.0}))
    assert wh.query("SELECT value FROM metrics")["value"].to_list() == [2.0]


def test_dimension_rows_merge_instead_of_losing_known_columns(wh):
    wh.write(checkpoint_rows())
    wh.write({"models": [{"model": "m", "hub_repo": "org/m"}]})
    row = wh.table("models").row(0, named=True)
    assert (row["family"], row["d_model"], row["hub_repo"]) == ("local", 8, "org/m")


def test_a_failed_write_leaves_no_partial_rows(wh):
    wh.write(checkpoint_rows(checkpoint="step1"))
    bad = checkpoint_rows(checkpoint="step2", step=2)
    bad["metrics"][0]["no_such_column"] = 1
    with pytest.raises(WarehouseError):
        wh.write(bad)
    assert wh.table("checkpoints")["checkpoint"].to_list() == ["step1"]
    assert wh.query("SELECT count(*) AS n FROM runs")["n"][0] == 1

    # A failure inside the transaction (a NOT NULL violation) is rolled back too.
    bad = checkpoint_rows(checkpoint="step3", step=3)
    bad["metrics"][0]["metric"] = None
    with pytest.raises(WarehouseError, match="nothing was written"):
        wh.write(bad)
    assert wh.table("checkpoints")["checkpoint"].to_list() == ["step1"]


def test_deletes_before_a_write_are_rolled_back_with_it(wh):
    wh.write(checkpoint_rows(metrics={"rankme": 1.0, "alpha_req": 0.5}))
    before = wh.table("metrics")
    bad = checkpoint_rows(checkpoint="step2", step=2)
    bad["metrics"][0]["metric"] = None
    with pytest.raises(WarehouseError, match="nothing was written"):
        wh.write(bad, before=[("DELETE FROM metrics WHERE model = ?", ["m"])])
    assert wh.table("metrics").equals(before)
    wh.write(checkpoint_rows(checkpoint="step2", step=2), before=[("DELETE FROM metrics WHERE model = ?", ["m"])])
    assert wh.query("SELECT DISTINCT checkpoint FROM metrics")["checkpoint"].to_list() == ["step2"]


def test_a_failed_rewrite_keeps_every_tables_old_rows(wh):
    wh.write(checkpoint_rows(metrics={"rankme": 1.0, "alpha_req": 0.5}))
    before = {t: wh.table(t) for t in ("models", "checkpoints", "runs", "metrics")}
    # The same checkpoint again, its runs row changed and its last table (metrics) failing inside
    # the transaction: the tables written before it must not keep their replacements.
    again = checkpoint_rows(metrics={"rankme": 2.0, "alpha_req": None})
    again["models"][0]["d_model"] = 16
    again["runs"][0]["status"] = "failed"
    again["metrics"][1]["metric"] = None
    with pytest.raises(WarehouseError, match="nothing was written"):
        wh.write(again)
    for table, rows in before.items():
        assert wh.table(table).equals(rows), table
    assert wh.trajectories(model="m")["rankme"].to_list() == [1.0]


def test_a_new_metric_name_gets_its_own_trajectories_column(wh):
    wh.write(checkpoint_rows(metrics={"rankme": 3.0, "my_metric": 7.0}))
    row = wh.trajectories().row(0, named=True)
    assert row["my_metric"] == 7.0 and row["alpha_req"] is None


def old_warehouse(path):
    """A warehouse as geowh's first schema wrote it, holding one model."""
    con = duckdb.connect(str(path))
    con.execute(migrations()[0].sql)
    con.execute("INSERT INTO schema_migrations VALUES (1, 'core trajectories', now())")
    con.execute("INSERT INTO models (model) VALUES ('kept')")
    con.close()
    return path


def test_an_older_warehouse_is_migrated_once_by_a_writer_and_reopening_is_harmless(tmp_path):
    path = old_warehouse(tmp_path / "old.duckdb")
    Warehouse(path).write({"models": [{"model": "new"}]})
    for _ in range(2):
        wh = Warehouse(path)
        assert wh.schema_version() == latest_version()
    assert wh.table("models")["model"].to_list() == ["kept", "new"]
    assert wh.table("schema_migrations").height == latest_version()


def v4_warehouse_with_memorization(path):
    """A warehouse as geowh wrote it before migration 5: a memorization score in `metrics` whose
    index only its params name, next to the geometry and an extra metric column in the view."""
    con = duckdb.connect(str(path))
    for migration in migrations()[:4]:
        con.execute(migration.sql)
        con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [migration.version, migration.title])
    con.execute("INSERT INTO models (model) VALUES ('m')")
    con.execute("INSERT INTO checkpoints (model, checkpoint, step) VALUES ('m', 'step1', 1), ('m', 'step2', 2)")
    con.execute("""INSERT INTO metrics VALUES
        ('m', 'step1', 'p', 2, 'last', 'rankme', 5.0, NULL, NULL, 'r1'),
        ('m', 'step1', 'p', 2, 'last', 'my_metric', 7.0, NULL, NULL, 'r1'),
        ('m', 'step2', 'p', 2, 'last', 'rankme', 6.0, NULL, NULL, 'r2'),
        ('m', 'step1', 'qa', NULL, NULL, 'memorization_spearman', 0.3, NULL, '{"index": "/idx/a", "n": 21}', 'r3'),
        ('m', 'step1', 'qa', NULL, NULL, 'memorization_spearman_per_token', 0.2, NULL, '{"index": "/idx/a"}', 'r3')""")
    con.close()
    return path


def test_migration_5_keeps_memorization_rows_and_keys_them_by_their_index(tmp_path):
    path = v4_warehouse_with_memorization(tmp_path / "v4.duckdb")
    wh = Warehouse(path)
    # a second index for the same checkpoint and task, written through a writer (which migrates)
    wh.write({"metrics": [{"model": "m", "checkpoint": "step1", "probe": "qa", "index_dir": "/idx/b",
                           "metric": "memorization_spearman", "value": 0.5}]})
    assert wh.schema_version() == latest_version()
    assert wh.query("select count(*) as n from metrics")["n"][0] == 6  # none lost
    scores = wh.query("select step, task, index, metric, value, n from memorization order by index, metric")
    assert scores.rows() == [(1, "qa", "/idx/a", "memorization_spearman", 0.3, 21),
                             (1, "qa", "/idx/a", "memorization_spearman_per_token", 0.2, None),
                             (1, "qa", "/idx/b", "memorization_spearman", 0.5, None)]
    assert wh.query("select count(*) as n from metrics where metric = 'memorization_spearman'")["n"][0] == 2
    traj = wh.query("select step, rankme, my_metric from trajectories where model = 'm' order by step")
    assert traj.rows() == [(1, 5.0, 7.0), (2, 6.0, None)]  # one row per checkpoint, later metrics kept
    assert "memorization_spearman" not in traj.columns


def test_reading_an_older_warehouse_is_refused_naming_migrate_and_changes_nothing(tmp_path):
    path = old_warehouse(tmp_path / "old.duckdb")
    before = path.read_bytes()
    wh = Warehouse(path)
    for read in (wh.info, lambda: wh.table("models"), lambda: wh.sql("select 42"),
                 lambda: wh.export(tmp_path / "out")):
        with pytest.raises(WarehouseError, match="geowh migrate"):
            read()
    assert path.read_bytes() == before and not (tmp_path / "out").exists()
    assert wh.migrate() == (1, latest_version())
    assert wh.table("models")["model"].to_list() == ["kept"]
    assert Warehouse(path).migrate() == (latest_version(), latest_version())


def test_a_duckdb_file_of_another_program_is_refused_and_never_given_geowh_tables(tmp_path):
    path = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE sales (id INT)")
    con.close()
    before = path.read_bytes()
    wh = Warehouse(path)
    for use in (wh.info, lambda: wh.sql("select 42"), lambda: wh.write({"models": [{"model": "m"}]}), wh.migrate):
        with pytest.raises(WarehouseError, match="not a geowh warehouse"):
            use()
    assert path.read_bytes() == before


def test_reading_a_missing_warehouse_is_an_error_and_creates_nothing(tmp_path):
    wh = Warehouse(tmp_path / "none.duckdb")
    for read in (wh.info, lambda: wh.table("models"), lambda: wh.sql("select 42"), lambda: wh.export(tmp_path / "o")):
        with pytest.raises(WarehouseError, match="no warehouse"):
            read()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_migration_can_run_twice_without_changing_anything():
    con = duckdb.connect(":memory:")
    catalogue = "SELECT table_name, column_name, data_type FROM duckdb_columns() ORDER BY ALL"
    for migration in migrations():
        con.execute(migration.sql)
        once = con.execute(catalogue).fetchall()
        con.execute(migration.sql)
        assert con.execute(catalogue).fetchall() == once, f"migration {migration.version} is not idempotent"
    con.close()


def test_a_warehouse_from_a_newer_geowh_is_refused(wh):
    wh.write(checkpoint_rows())
    wh.execute("INSERT INTO schema_migrations VALUES (999, 'future', now())")
    with pytest.raises(WarehouseError, match="newer"):
        Warehouse(wh.path).table("models")


def test_user_sql_that_writes_is_refused(wh):
    wh.write(checkpoint_rows())
    for statement in ["CREATE TABLE x (a INT)", "DELETE FROM metrics", "select 1; drop table metrics",
                      "COPY metrics TO 'x.csv'", "ATTACH 'other.duckdb'", "INSERT INTO models (model) VALUES ('x')"]:
        with pytest.raises(WarehouseError, match="only reads"):
            wh.sql(statement)
    assert wh.table("metrics").height == 2


def test_user_sql_reads_and_works_without_a_file_when_told_to(tmp_path):
    assert Warehouse(tmp_path / "none.duckdb").sql("select 42 as x", missing_ok=True)["x"].to_list() == [42]
    assert not (tmp_path / "none.duckdb").exists()


def test_a_file_that_is_not_a_warehouse_gets_a_clear_error(tmp_path):
    path = tmp_path / "junk.duckdb"
    path.write_text("not a database")
    with pytest.raises(WarehouseError, match="not a readable DuckDB"):
        Warehouse(path).table("models")


def test_export_writes_one_parquet_per_table_and_the_view(wh, tmp_path):
    wh.write(checkpoint_rows())
    written = wh.export(tmp_path / "out")
    names = {p.stem for p in written}
    assert {"models", "checkpoints", "metrics", "runs", "trajectories"} <= names
    assert pl.read_parquet(tmp_path / "out" / "trajectories.parquet")["rankme"].to_list() == [3.0]


def test_info_counts_rows_and_models(wh):
    wh.write(checkpoint_rows(checkpoint="step1"))
    wh.write(checkpoint_rows(checkpoint="step2", step=2))
    summary = wh.info()
    assert summary["tables"]["metrics"] == 4
    assert summary["models"][0]["checkpoints"] == 2


def test_olmo_short_names_are_aliases_of_the_olmo_2_series():
    assert canonical_model("olmo-7b") == "olmo-2-7b"
    assert canonical_model("OLMo-1B") == "olmo-2-1b"
    assert canonical_model("pythia-410m") == "pythia-410m"


@settings(max_examples=10, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=True, allow_infinity=False, width=64), min_size=1, max_size=6
    ),
    steps=st.lists(st.integers(0, 10**6), min_size=1, max_size=6, unique=True),
)
def test_hypothesis_metric_values_round_trip_exactly(tmp_path_factory, values, steps):
    wh = Warehouse(tmp_path_factory.mktemp("h") / "w.duckdb")
    written = {}
    for step, value in zip(steps, values):
        wh.write(checkpoint_rows(checkpoint=f"step{step}", step=step, metrics={"rankme": value}))
        written[step] = value
    back = dict(wh.trajectories().select("step", "rankme").iter_rows())
    assert back.keys() == written.keys()
    for step, value in written.items():
        assert (math.isnan(value) and math.isnan(back[step])) or back[step] == value


def test_every_table_declares_its_key_in_schema_sql_and_writes_by_it(wh):
    from geowh.warehouse.schema import schema_text, table_keys

    keys = table_keys()
    with duckdb.connect(":memory:") as con:
        for m in migrations():
            con.execute(m.sql)
        columns = {}
        for table, column in con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal AND table_name IN "
            "(SELECT table_name FROM duckdb_tables() WHERE NOT internal)"
        ).fetchall():
            columns.setdefault(table, set()).add(column)
    for table in set(columns) - {"schema_migrations"}:
        assert table in keys, f"{table} declares no `-- key` in schema.sql"
        assert set(keys[table].columns) <= columns[table], table
    assert "-- key metrics (model, checkpoint, probe, layer, pooling, index_dir, metric)" in schema_text()
    assert {t for t, k in keys.items() if k.merged} == {"models", "checkpoints", "probes"}
    # the key decides what a second write replaces: same key → one row, merged tables keep old columns
    wh.write(checkpoint_rows(metrics={"rankme": 3.0}))
    wh.write({"models": [{"model": "m", "family": None, "layers": 4}],
              "metrics": [{"model": "m", "checkpoint": "step1", "probe": "p", "layer": 2, "pooling": "last",
                           "metric": "rankme", "value": 5.0, "run_id": "m-step1"}]})
    assert wh.query("select value from metrics")["value"].to_list() == [5.0]
    assert wh.query("select family, layers from models").row(0) == ("local", 4)


def test_a_table_without_a_declared_key_is_refused_not_written_blindly(wh, monkeypatch):
    from geowh.warehouse import store

    wh.write(checkpoint_rows())
    monkeypatch.delitem(store.TABLE_KEYS, "metrics")
    with pytest.raises(WarehouseError, match="declares no key"):
        wh.write({"metrics": checkpoint_rows()["metrics"]})
