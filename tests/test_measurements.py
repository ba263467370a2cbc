"""The measurement registry: one module per measurement, picked up by the engine, the CLI and the live probe."""

from __future__ import annotations

import inspect
import types

import pytest
from tiny import save_series, write_docs

from geowh.errors import InputError
from geowh.ingest import measurements
from geowh.ingest.config import IngestConfig
from geowh.ingest.engine.plan import Measurement
from geowh.ingest.measurements import Option


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("measurements")
    save_series(root / "run", steps=(0, 1))
    write_docs(root / "docs.txt")
    return root


def _config(workdir, **kwargs) -> IngestConfig:
    return IngestConfig(probe=str(workdir / "docs.txt"), n=16, max_len=16, **kwargs)


def test_every_module_that_names_a_measurement_is_registered_and_adds_its_options_to_ingest_and_watch(cli):
    registered = measurements.registry()
    assert list(registered) == ["generation", "geometry", "memorization"]
    for name, module in registered.items():
        assert module.NAME == name and callable(module.build)
        assert module.__name__ == f"geowh.ingest.measurements.{name}"  # one module each
    flags = [o.flag for o in measurements.options()]
    assert flags == ["--generate", "--samples", "--k", "--temperature", "--max-new-tokens",
                     "--memorization", "--index", "--index-tokenizer"]
    for command in ("ingest", "watch"):
        shown = cli([command, "--help"]).output
        assert all(flag in shown for flag in flags), command


class Layers(Measurement):
    """A measurement as a new module would define one: the model's layer count as a metric row."""

    def __init__(self, offset: int):
        super().__init__("layers", config={"offset": offset})

    def measure(self, loaded, ref, config, meter):
        value = float(loaded.n_layers + self.config["offset"])
        return {"metrics": [{"model": ref.model, "checkpoint": ref.label, "probe": "none", "layer": None,
                             "pooling": None, "metric": "n_layers", "value": value, "stderr": None, "params": {}}]}


@pytest.fixture
def with_layers(monkeypatch):
    """The registry with a third entry, as a module defining NAME, OPTIONS and build would make it."""
    module = types.SimpleNamespace(
        NAME="layers",
        OPTIONS=(Option("layers_offset", "--layers-offset", "Count the layers, plus this.", int),),
        build=lambda config, options: (Layers(options["layers_offset"])
                                       if options.get("layers_offset") is not None else None),
    )
    registered = dict(measurements.registry()) | {"layers": module}
    monkeypatch.setattr(measurements, "registry", lambda: registered)
    return module


def test_a_registered_measurement_runs_in_every_checkpoints_transaction_and_keys_the_run(workdir, tmp_path, with_layers):
    from geowh.ingest import ingest
    from geowh.warehouse import Warehouse

    db = tmp_path / "w.duckdb"
    summary = ingest(str(workdir / "run"), _config(workdir), db=db, options={"layers_offset": 1})
    assert summary.count("ok") == 2
    wh = Warehouse(db)
    rows = wh.query("SELECT m.value, r.kind, r.status FROM metrics m JOIN runs r USING (run_id) "
                    "WHERE m.metric = 'n_layers'").rows()
    assert rows == [(3.0, "geometry+layers", "ok")] * 2  # tiny models have 2 layers
    assert ingest(str(workdir / "run"), _config(workdir), db=db, options={"layers_offset": 1}).count("skipped") == 2
    # its config is part of the key: another offset is another result, not "already done"
    assert ingest(str(workdir / "run"), _config(workdir), db=db, options={"layers_offset": 2}).count("ok") == 2
    assert ingest(str(workdir / "run"), _config(workdir, geometry=False), db=tmp_path / "alone.duckdb",
                  options={"layers_offset": 0}).count("ok") == 2


def test_a_registered_measurements_options_become_cli_options(with_layers):
    from geowh.cli.ingest import with_measurement_options

    def command(model: str, **measurement_options) -> None:
        pass

    parameters = inspect.signature(with_measurement_options(command)).parameters
    assert list(parameters) == ["model", "generate", "samples", "k", "temperature", "max_new_tokens",
                                "memorization", "index", "index_tokenizer", "layers_offset"]
    assert parameters["layers_offset"].default is None


def test_nothing_to_measure_is_refused(workdir):
    from geowh.ingest.engine.plan import plan_ingest

    with pytest.raises(InputError, match="nothing to measure"):
        plan_ingest(str(workdir / "run"), _config(workdir, geometry=False))


def test_the_live_probe_measures_what_the_registry_builds(workdir, monkeypatch):
    from tiny import tiny_model, tokenizer

    from geowh.integrations import GeometryProbe

    built = []
    build = measurements.build
    monkeypatch.setattr(measurements, "build", lambda *a, **k: built.append(1) or build(*a, **k))
    probe = GeometryProbe(tokenizer(), workdir / "docs.txt", n=8, max_len=16)
    assert built and [m.name for m in probe.measurements] == ["geometry"]
    values = probe.measure(tiny_model(), step=5)
    assert values["checkpoint"] == "step5" and values["rankme"] > 0


def test_the_live_probe_takes_an_ingest_config_or_its_fields(workdir):
    from tiny import tokenizer

    from geowh.integrations import GeometryProbe

    config = _config(workdir, layers="all")
    assert GeometryProbe(tokenizer(), config).config == config
    by_fields = GeometryProbe(tokenizer(), workdir / "docs.txt", n=16, max_len=16, layers="all")
    assert by_fields.config == config and by_fields.probe.id == GeometryProbe(tokenizer(), config).probe.id
    with pytest.raises(InputError, match="unknown setting.*max_length"):
        GeometryProbe(tokenizer(), workdir / "docs.txt", max_length=16)
    with pytest.raises(InputError, match="--n 0"):  # checked by IngestConfig, as an ingest's
        GeometryProbe(tokenizer(), workdir / "docs.txt", n=0)
