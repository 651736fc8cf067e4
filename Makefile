# Install into .venv (torch's CPU wheel first: a bare `torch` requirement would pull a
# multi-GB CUDA build), then run the main job or the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: install
	$(BIN)/nas2deploy search-and-export $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/search_overhead.py
	$(BIN)/python benchmarks/latency_constraint.py
	$(BIN)/python benchmarks/measurement_drift.py
	$(BIN)/python benchmarks/precision_latency.py
	$(BIN)/python benchmarks/lut_accuracy.py

clean:
	rm -rf $(VENV) nas2deploy-out *.egg-info
