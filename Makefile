# The two commands of the README's quick start. Each creates and fills the virtual
# environment on first use (and again when pyproject.toml changes), so a fresh machine
# needs nothing but Python 3.11+ and make.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# torch 2.13.0 from PyPI is the CPU build here; install a CUDA build first for a GPU.
TORCH ?= torch==2.13.0

.PHONY: demo test test-fast test-slow lint browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH)" -e ".[test,lightning,ray,posttrain]"
	touch $@

# The main job shows the three pretraining phases, so it trains the one configuration measured to
# show them with `geowh phases`' defaults: `geowh demo --long` (docs/train-mini.md, issue 19).
# Nothing shorter did (runs of 1,500-5,000 steps end in entropy-seeking). `geowh demo` without
# --long is the quick look: 1,000 steps, warmup and entropy-seeking only.
demo: $(VENV)/.installed  ## the main job, offline: train, index, ingest, the three phases, plots
	$(BIN)/geowh demo --long runs/demo-long --db demo.duckdb

# `test` is what CI runs (.ci/run): the static checks, then every test in two tiers: the fast
# tier, then the slow one (the fault-injection trials: kill -9, signals, a reader holding the
# file, a full disk; the Ray cluster; the demo's determinism; packaging; the report in a
# browser). `test-fast` is the first tier alone, while you work. Timings: docs/testing.md.
# The fast tier runs on WORKERS pytest-xdist processes (one per core, at most 4: each holds
# torch and a tiny model or two), each test on one torch thread (tests/conftest.py); a file
# whose tests share a module fixture stays on one worker (--dist loadgroup). The slow tier runs
# in one process: its trials time signals against a running ingest.
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n > 4 ? 4 : n )))
FAST := -m "not slow" -n $(WORKERS) --dist loadgroup

test: $(VENV)/.installed browser lint  ## the whole suite, as CI runs it: both tiers
	$(BIN)/python -m pytest $(FAST)
	$(BIN)/python -m pytest -m slow

test-fast: $(VENV)/.installed lint  ## the suite without the slow tier (pytest -m "not slow", in parallel)
	$(BIN)/python -m pytest $(FAST)

test-slow: $(VENV)/.installed browser  ## the slow tier alone
	$(BIN)/python -m pytest -m slow

# ruff and mypy over the package (configured in pyproject.toml). The repository root is the
# package `geowh`, so mypy reads it through a link named geowh in build/typecheck.
lint: $(VENV)/.installed  ## the static checks alone
	$(BIN)/ruff check .
	@mkdir -p build/typecheck && ln -sfn "$(CURDIR)" build/typecheck/geowh
	MYPYPATH=build/typecheck $(BIN)/mypy -p geowh

# The report's browser test (tests/test_report.py) loads the HTML in headless Chromium: Debian's
# package, installed here where we are root with apt-get; elsewhere the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; } || \
	  echo "note: chromium is not installed and could not be; the report's browser test will skip"
