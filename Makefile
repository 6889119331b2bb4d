# Every target sets up what it needs: a .venv with torch==2.13.0 (CPU wheel on these machines;
# a looser pin drags in several GB of CUDA packages) and then posttrain with its test extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.posttrain-installed
PYTEST := $(BIN)/python -m pytest
OUT    ?= outputs/demo

.PHONY: install demo test test-slow test-distributed test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m posttrain.demo --output_dir $(OUT)

test: install
	$(PYTEST) -q -m "not slow and not distributed" --durations=10

test-slow: install
	$(PYTEST) -q -m "slow"

test-distributed: install
	$(PYTEST) -q -m "distributed"

test-all: install
	$(PYTEST) -q

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
