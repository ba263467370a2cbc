"""Config objects are the one source of defaults: the CLI's options read them."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest
import typer

from geowh.cli import app
from geowh.ingest.config import IngestConfig, MemorizeConfig, Selection


def _options(command: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


@pytest.mark.parametrize(("command", "configs"), [
    ("ingest", (IngestConfig, Selection)),
    ("watch", (IngestConfig,)),
    ("memorize", (MemorizeConfig, Selection)),
])
def test_every_cli_default_is_the_library_default(command, configs):
    options = _options(command)
    compared = []
    for config in configs:
        for f in fields(config):
            if f.name not in options or f.default is MISSING:
                continue
            assert options[f.name].default == f.default, f"{command} --{f.name}"
            compared.append(f.name)
    # the options that are a config's fields are the config's: none forgotten
    assert len(compared) >= {"ingest": 16, "watch": 14, "memorize": 8}[command], compared


def test_the_ingest_command_builds_its_config_from_every_option_it_has():
    from geowh.cli.ingest import config_of

    names = {f.name for f in fields(IngestConfig)} - {"geometry"}
    assert names <= set(_options("ingest"))
    assert config_of({"n": 7, "max_len": 9, "probe": "x.txt"}) == IngestConfig(probe="x.txt", n=7, max_len=9)


def test_subsets_smaller_than_the_minimum_part_are_refused_and_say_so():
    # issue 18: --subsets 32 --n 64 stored RankMe 1.0 measured on 2-row parts
    from geowh.errors import InputError
    from geowh.ingest.config import MIN_SUBSET_ROWS, IngestConfig

    with pytest.raises(InputError, match=f"parts of 2 of the --n 64 sequences; a part needs at least {MIN_SUBSET_ROWS}"):
        IngestConfig(n=64, subsets=32)
    assert IngestConfig(n=64, subsets=4).subsets == 4  # parts of 16
    with pytest.raises(InputError, match="--subsets ≤ 3"):
        IngestConfig(n=63, subsets=4)
