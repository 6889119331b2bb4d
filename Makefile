# Every target sets up what it needs: a .venv with torch==2.13.0 (CPU wheel on these machines;
# a looser pin drags in several GB of CUDA packages) and then posttrain with its test extras and bitsandbytes (QLoRA
# runs on CPU, so tests/models/test_qlora.py runs in `make test`), every package at the
# version requirements/lock.txt pins (pip constraints), so a fresh machine builds the environment CI last passed on.
# `make lock` refreshes the lock from the newest releases (after the suites pass on them); `make test-newest` runs
# the suite on the newest releases without touching it (docs/reliability.md, "Reproducible installs").
PYTHON ?= python3
VENV   ?= .venv
LOCK   := requirements/lock.txt
CONSTRAINTS ?= -c $(LOCK)
PIP    = $(BIN)/pip install -q --disable-pip-version-check $(CONSTRAINTS)
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.posttrain-installed
DS_STAMP := $(VENV)/.posttrain-deepspeed-installed
# An OpenEnv server's own environment (openenv-core and its web stack, which pin versions posttrain's environment does not
# share): the tests start the kit's environment server from it (posttrain/kit/openenv_server.py, docs/agents.md).
OPENENV_VENV ?= .venv-openenv
OPENENV_STAMP := $(OPENENV_VENV)/.posttrain-openenv-installed
PYTEST := $(BIN)/python -m pytest
# test workers (pytest-xdist): each test runs on one thread (tests/conftest.py), so one worker per core
TEST_WORKERS ?= 2
OUT    ?= outputs/demo

.PHONY: openenv-venv install demo test test-fast test-slow test-distributed test-all test-seeds test-newest lock bench bench-packing bench-trl trl-venv gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,quantization]"
	@touch $(STAMP)

install: $(STAMP)

$(OPENENV_STAMP):
	$(PYTHON) -m venv $(OPENENV_VENV)
	$(OPENENV_VENV)/bin/pip install -q --disable-pip-version-check openenv-core==0.3.0
	@touch $(OPENENV_STAMP)

openenv-venv: $(OPENENV_STAMP)

demo: install
	$(BIN)/python -m posttrain.demo --output_dir $(OUT)

test: install $(OPENENV_STAMP)
	$(PYTEST) -q -n $(TEST_WORKERS) -m "not slow and not distributed" --durations=10

# the default suite without the learning tests (-m learning: each trains a model until a metric moves) and the runs of
# the shipped notebooks and example scripts (-m example): a quick check while working; `make test` is the measure
test-fast: install $(OPENENV_STAMP)
	$(PYTEST) -q -n $(TEST_WORKERS) -m "not slow and not distributed and not learning and not example" --durations=5

test-slow: install
	$(PYTEST) -q -m "slow"

# DeepSpeed for the distributed tests (pinned next to torch so pip cannot swap torch). On CPU, DeepSpeed compiles a
# shared-memory communication op the first time it starts, and its CPU Adam for offload (~3 and ~5 min on 2 cores,
# cached in ~/.cache/torch_extensions); they are built here once, so the tests' own timings do not include them.
$(DS_STAMP): $(STAMP)
	$(PIP) torch==2.13.0 -e ".[deepspeed]"
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; \
		[b is None or b.load() for b in map(a().create_op_builder, ('ShareMemCommBuilder', 'CPUAdamBuilder'))]"
	@touch $(DS_STAMP)

test-distributed: install $(DS_STAMP)
	DS_ACCELERATOR=cpu $(PYTEST) -q -m "distributed" --durations=25

test-all: install $(OPENENV_STAMP)
	$(PYTEST) -q

# The learning tests (-m learning) with training seeds 0, 1 and 2; each seed's output in outputs/seeds/, and the lines
# the tests print about what they measured (their margins) shown here. Their docstrings record these margins.
test-seeds: install $(OPENENV_STAMP)
	@mkdir -p outputs/seeds
	@for s in 0 1 2; do echo "== seed $$s"; POSTTRAIN_TEST_SEED=$$s $(PYTEST) -q -s -m "learning and not distributed" \
		-p no:cacheprovider > outputs/seeds/seed-$$s.log 2>&1; \
		grep -E " -> |^(FAILED|ERROR)|passed|failed" outputs/seeds/seed-$$s.log | grep -v "^{"; done

# The newest releases of the day, in a fresh .venv-newest (no constraints): the suite, then what moved against the lock.
test-newest:
	rm -rf .venv-newest
	$(MAKE) test VENV=.venv-newest CONSTRAINTS=
	$(PYTHON) tools/lockfile.py freeze .venv-newest .venv-newest/versions.txt
	@echo "newest releases against $(LOCK):"; $(PYTHON) tools/lockfile.py diff $(LOCK) .venv-newest/versions.txt --common

# Refresh the lock: both suites on the newest releases, and only if they pass, the lock rewritten (and what moved).
lock:
	rm -rf .venv-newest
	$(MAKE) test test-distributed VENV=.venv-newest CONSTRAINTS=
	$(PYTHON) tools/lockfile.py freeze .venv-newest $(LOCK).new
	@echo "moved:"; $(PYTHON) tools/lockfile.py diff $(LOCK) $(LOCK).new
	mv $(LOCK).new $(LOCK)

# posttrain side by side with TRL (issue 8): first-step checks, then speed and memory of the headline scenarios at both
# libraries' defaults and best settings. Each peer runs from its own venv, benchmarks/.venv-trl-<version> (TRL 1.16,
# and 0.21 for the trainers 1.16 no longer ships), created on first use. About 1.5 h on 2 cores; BENCH_SCENARIOS narrows
# it, e.g. `make bench BENCH_SCENARIOS="sft dpo"`. Online DPO is measured against both peers (its target is TRL 0.21's). Results: benchmarks/out/compare/*-latest.md (benchmarks/archive/RESULTS.md: the record until 2026-12; docs/performance.md: the current figures).
TRL_VERSION ?= 1.16.0
BENCH_SCENARIOS ?= sft dpo kto grpo rloo online-dpo ppo
bench: install
	TRL_VERSION=$(TRL_VERSION) $(BIN)/python benchmarks/compare.py check --size small
	TRL_VERSION=$(TRL_VERSION) $(BIN)/python benchmarks/compare.py speed --size bench --steps 4 --warmup_steps 1 \
		--repeats 2 --settings default best --scenarios $(BENCH_SCENARIOS)
	$(if $(filter online-dpo,$(BENCH_SCENARIOS)),$(BIN)/python benchmarks/compare.py speed --size bench --steps 4 \
		--warmup_steps 1 --repeats 2 --settings default best --scenarios online-dpo --peer 0.21.0)

# posttrain alone: SFT with packing off and on (benchmarks/archive/RESULTS.md, first section)
bench-packing: install
	$(BIN)/python benchmarks/run.py

# on a machine with one CUDA GPU: the CUDA paths (fused head, SFT/DPO/GRPO in bf16 and fp16 on a kit and a real-shape
# model, ZeRO-2/3, Liger and vLLM where installed, the tests marked gpu) as a PASS/FAIL table and outputs/gpu-check.json
gpu-check: install
	$(BIN)/python tools/gpu_check.py

trl-venv:
	PYTHON=$(PYTHON) benchmarks/peer/make_venv.sh $(TRL_VERSION)

# the whole side-by-side suite: every scenario (some hours)
bench-trl: install trl-venv
	TRL_VERSION=$(TRL_VERSION) $(BIN)/python benchmarks/compare.py check --size small
	TRL_VERSION=$(TRL_VERSION) $(BIN)/python benchmarks/compare.py speed --size bench

clean:
	rm -rf $(VENV) outputs .pytest_cache
