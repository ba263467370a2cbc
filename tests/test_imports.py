"""Importing trajectories computed elsewhere: CSV or Parquet, long or wide."""

from __future__ import annotations

import json

import polars as pl
import pytest

from geowh.errors import InputError
from geowh.queries import import_metrics

LONG = pl.DataFrame({
    "model": ["my-run"] * 6,
    "step": [0, 0, 100, 100, 1000, 1000],
    "metric": ["rankme", "alpha_req"] * 3,
    "value": [120.0, 0.5, 60.0, 1.1, 150.0, 0.8],
    "stderr": [1.0, 0.01, None, None, 2.0, 0.02],
    "probe": ["fineweb"] * 6,
    "layer": [12] * 6,
})


def test_a_long_csv_becomes_metrics_checkpoints_and_an_import_run(wh, tmp_path):
    path = tmp_path / "long.csv"
    LONG.write_csv(path)
    summary = import_metrics(wh, path)
    assert summary.rows() == [("my-run", 3, "alpha_req,rankme", 6, "imported")]
    traj = wh.trajectories(model="my-run")
    assert traj["checkpoint"].to_list() == ["step0", "step100", "step1000"]
    assert traj["step"].to_list() == [0, 100, 1000] and traj["rankme"].to_list() == [120.0, 60.0, 150.0]
    assert traj["layer"].to_list() == [12] * 3 and traj["probe"].to_list() == ["fineweb"] * 3
    stderr = wh.query("SELECT stderr FROM metrics WHERE metric = 'rankme' ORDER BY checkpoint")["stderr"].to_list()
    assert stderr == [1.0, None, 2.0]
    run = wh.query("SELECT kind, status, model, config FROM runs").row(0, named=True)
    assert run["kind"] == "import" and run["status"] == "ok" and run["model"] == "my-run"
    assert json.loads(run["config"])["source"].endswith("long.csv")
    assert wh.query("SELECT family FROM models")["family"].item() == "imported"


def test_a_wide_parquet_with_stages_gets_stage_labels(wh, tmp_path):
    wide = pl.DataFrame({
        "model": ["olmo-7b"] * 4,
        "stage": ["pretrain", "pretrain", "sft", "dpo"],
        "step": [1000, 2000, 100, 100],
        "tokens": [4e9, 8e9, None, None],
        "rankme": [80.0, 90.0, 110.0, 120.0],
        "alpha_req": [0.9, 0.85, 0.8, 0.75],
        "rankme_stderr": [1.0, 1.0, 1.0, 1.0],
    })
    path = tmp_path / "wide.parquet"
    wide.write_parquet(path)
    import_metrics(wh, path)
    ckpts = wh.query("SELECT checkpoint, step, tokens, stage, stage_order FROM checkpoints ORDER BY stage_order, step")
    assert ckpts["checkpoint"].to_list() == ["step1000", "step2000", "sft-step100", "dpo-step100"]
    assert ckpts["stage_order"].to_list() == [0, 0, 2, 3] and ckpts["tokens"][0] == 4e9
    assert set(wh.query("SELECT DISTINCT model FROM metrics")["model"]) == {"olmo-2-7b"}  # alias resolved
    assert wh.query("SELECT count(*) AS n FROM metrics WHERE metric = 'rankme' AND stderr = 1")["n"].item() == 4
    assert wh.query("SELECT count(*) AS n FROM metrics WHERE metric = 'rankme_stderr'")["n"].item() == 0


def test_importing_the_same_file_twice_changes_nothing(wh, tmp_path):
    path = tmp_path / "long.csv"
    LONG.write_csv(path)
    import_metrics(wh, path)
    before = {t: wh.table(t).sort(pl.all()) for t in ("metrics", "runs", "checkpoints", "models")}
    again = import_metrics(wh, path)
    assert again["status"].to_list() == ["unchanged"]
    for table, frame in before.items():
        assert wh.table(table).sort(pl.all()).equals(frame), table


def test_a_file_of_neither_layout_is_refused_by_name(wh, tmp_path):
    path = tmp_path / "notes.csv"
    pl.DataFrame({"model": ["a"], "step": [1], "comment": ["hello"]}).write_csv(path)
    with pytest.raises(InputError, match="notes.csv is neither long"):
        import_metrics(wh, path)


def test_repeated_rows_and_missing_columns_are_refused(wh, tmp_path):
    path = tmp_path / "twice.csv"
    pl.concat([LONG, LONG.head(1)]).write_csv(path)
    with pytest.raises(InputError, match="repeated rows"):
        import_metrics(wh, path)
    path = tmp_path / "nomodel.csv"
    LONG.drop("model").write_csv(path)
    with pytest.raises(InputError, match="--model"):
        import_metrics(wh, path)
    assert import_metrics(wh, path, model="given")["model"].to_list() == ["given"]


def test_cli_import_metrics_prints_json(cli, tmp_path):
    path = tmp_path / "long.csv"
    LONG.write_csv(path)
    result = cli(["import-metrics", path, "--db", tmp_path / "w.duckdb", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"model": "my-run", "checkpoints": 3, "metrics": "alpha_req,rankme", "rows": 6, "status": "imported"}
    ]
    missing = cli(["import-metrics", tmp_path / "nope.csv", "--db", tmp_path / "w.duckdb"])
    assert missing.exit_code == 1 and "nope.csv" in missing.output


def measured(wh):
    """A warehouse holding rankme and alpha_req of my-run step100 (layer 12, probe fineweb) from an ingest."""
    wh.write({
        "models": [{"model": "my-run", "family": "local"}],
        "checkpoints": [{"model": "my-run", "checkpoint": "step100", "step": 100}],
        "runs": [{"run_id": "ingest-1", "kind": "geometry", "model": "my-run", "checkpoint": "step100", "status": "ok"}],
        "metrics": [{"model": "my-run", "checkpoint": "step100", "probe": "fineweb", "layer": 12, "pooling": None,
                     "metric": m, "value": v, "run_id": "ingest-1"} for m, v in (("rankme", 61.5), ("alpha_req", 1.05))],
    })
    return wh


def test_rows_an_ingest_measured_are_refused_naming_them_unless_replace(wh, tmp_path):
    measured(wh)
    path = tmp_path / "long.csv"
    LONG.write_csv(path)
    with pytest.raises(InputError, match=r"lines 4, 5: 2 row\(s\) would replace values an ingest measured.*step100.*--replace"):
        import_metrics(wh, path)
    values = wh.query("SELECT metric, value FROM metrics ORDER BY metric")
    assert values.rows() == [("alpha_req", 1.05), ("rankme", 61.5)]  # untouched, nothing else written
    assert wh.query("SELECT count(*) AS n FROM runs WHERE kind = 'import'")["n"].item() == 0
    import_metrics(wh, path, replace=True)
    assert wh.trajectories(model="my-run")["rankme"].to_list() == [120.0, 60.0, 150.0]


def test_imported_values_may_be_replaced_by_another_import(wh, tmp_path):
    path = tmp_path / "long.csv"
    LONG.write_csv(path)
    import_metrics(wh, path)
    LONG.with_columns(pl.col("value") * 2).write_csv(path)
    import_metrics(wh, path)
    assert wh.trajectories(model="my-run")["rankme"].to_list() == [240.0, 120.0, 300.0]


@pytest.mark.parametrize("cell", ["nan", "inf", "-inf"])
def test_nan_and_infinite_values_are_refused_with_their_line(wh, tmp_path, cell):
    path = tmp_path / "long.csv"
    path.write_text(f"model,step,metric,value\nm,1,rankme,3.5\nm,2,rankme,{cell}\n")
    with pytest.raises(InputError, match="long.csv, line 3: a NaN or infinite value"):
        import_metrics(wh, path)
    wide = tmp_path / "wide.parquet"
    pl.DataFrame({"model": ["m"] * 3, "step": [1, 2, 3], "rankme": [1.0, 2.0, float(cell)]}).write_parquet(wide)
    with pytest.raises(InputError, match="wide.parquet, row 3: a NaN or infinite value"):
        import_metrics(wh, wide)
    assert not wh.path.exists()


def test_negative_steps_are_refused_with_their_line(wh, tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("model,step,rankme,alpha_req\nm,0,3.5,0.9\nm,-100,3.5,0.9\nm,100,3.1,1.0\n")
    with pytest.raises(InputError, match="wide.csv, line 3: a negative step"):
        import_metrics(wh, path)
    assert not wh.path.exists()


def test_import_metrics_replace_in_the_cli(cli, wh, tmp_path):
    measured(wh)
    path = tmp_path / "long.csv"
    LONG.write_csv(path)
    refused = cli(["import-metrics", path, "--db", wh.path])
    assert refused.exit_code == 1 and "--replace" in refused.output and "Traceback" not in refused.output
    assert cli(["import-metrics", path, "--db", wh.path, "--replace"]).exit_code == 0


def test_an_import_never_changes_the_step_tokens_or_stage_of_a_measured_checkpoint(wh, tmp_path):
    # issue 18: `run,5,foo,1,step0,123,sft` moved an ingested checkpoint to step 5 of sft, no --replace needed
    measured(wh)
    path = tmp_path / "long.csv"
    path.write_text("model,step,metric,value,checkpoint,tokens,stage\nmy-run,0,bar,2,step0,0,pretrain\n"
                    "my-run,5,foo,1,step100,123,sft\n")
    before = {t: wh.table(t).sort(pl.all()) for t in ("metrics", "runs", "checkpoints")}
    for replace in (False, True):
        with pytest.raises(InputError, match=r"long.csv, line 3: 1 checkpoint\(s\) an ingest measured would change, "
                                             r"e.g. my-run step100 \(step 100, tokens None, stage None; the file says step 5"):
            import_metrics(wh, path, replace=replace)
        for table, frame in before.items():
            assert wh.table(table).sort(pl.all()).equals(frame), table


def test_an_import_that_agrees_with_a_measured_checkpoint_adds_its_metrics_and_leaves_the_checkpoint(wh, tmp_path):
    measured(wh)
    wh.execute("UPDATE checkpoints SET stage = 'pretrain', stage_order = 0, tokens = 4e8")
    path = tmp_path / "long.csv"
    path.write_text("model,step,metric,value,stage\nmy-run,100,foo,1.5,pretrain\nmy-run,200,foo,2.5,\n")
    import_metrics(wh, path)
    rows = wh.query("SELECT checkpoint, step, tokens, stage FROM checkpoints ORDER BY step").rows()
    assert rows == [("step100", 100, 4e8, "pretrain"), ("step200", 200, None, None)]
    foo = wh.query("SELECT checkpoint, value FROM metrics WHERE metric = 'foo' ORDER BY checkpoint").rows()
    assert foo == [("step100", 1.5), ("step200", 2.5)]


@pytest.mark.parametrize("line, what", [
    ("m,1.5,rankme,3.0,,,", "a step that is not a whole number"),
    ("m,2,step,3.0,,,", "a metric name that is empty or a column's"),
    ("m,2,Model,3.0,,,", "a metric name that is empty or a column's"),
    ("m,2,stage_order,3.0,,,", "a metric name that is empty or a column's"),
    ("m,2,rankme,3.0,-0.1,,", "a negative stderr"),
    ("m,2,rankme,3.0,,-1,", "a negative layer"),
    ("m,2,rankme,3.0,,1.5,", "a layer that is not a whole number"),
    ("m,2,rankme,3.0,,,cls", "an unknown pooling"),
])
def test_rows_that_would_be_stored_wrong_are_refused_with_their_line(wh, cli, tmp_path, line, what):
    path = tmp_path / "long.csv"
    path.write_text(f"model,step,metric,value,stderr,layer,pooling\nm,1,rankme,3.5,0.1,2,last\n{line}\n")
    with pytest.raises(InputError, match=f"long.csv, line 3: {what}"):
        import_metrics(wh, path)
    result = cli(["import-metrics", path, "--db", wh.path])
    assert result.exit_code == 1 and what in result.output and "Traceback" not in result.output
    assert not wh.path.exists()


def test_a_wide_column_named_like_a_key_is_refused_not_stored_as_a_metric(wh, tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("model,step,rankme,stage_order\nm,1,3.5,0\n")
    with pytest.raises(InputError, match="line 2: a metric name that is empty or a column's"):
        import_metrics(wh, path)
