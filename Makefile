# The two commands of the README's quick start. Each creates and fills the virtual
# environment on first use (and again when pyproject.toml changes), so a fresh machine
# needs nothing but Python 3.11+ and make.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# torch 2.13.0 from PyPI is the CPU build here; install a CUDA build first for a GPU.
TORCH ?= torch==2.13.0

.PHONY: demo test test-slow

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH)" -e ".[test,lightning,ray]"
	touch $@

demo: $(VENV)/.installed  ## the main job, offline: train, index, ingest, phases, plots
	$(BIN)/geowh demo runs/demo --db demo.duckdb

# The suite in two tiers, both run by CI (.ci/run): `test` is everything but the tests marked
# slow (minutes on 2 cores), `test-slow` the slow tier: the fault-injection trials (kill -9,
# signals, a reader holding the file, a full disk), Ray's SIGTERM and packaging.
test: $(VENV)/.installed  ## the test suite without the slow tier, offline, on the CPU
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(VENV)/.installed  ## the slow tier: fault injection, signals, packaging
	$(BIN)/python -m pytest -m slow
