# Every target sets up what it needs: a .venv with torch==2.13.0 (CPU wheel on these machines;
# a looser pin drags in several GB of CUDA packages) and then posttrain with its test extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.posttrain-installed
DS_STAMP := $(VENV)/.posttrain-deepspeed-installed
PYTEST := $(BIN)/python -m pytest
OUT    ?= outputs/demo

.PHONY: install demo test test-slow test-distributed test-all bench bench-packing bench-trl trl-venv clean

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

# DeepSpeed for the distributed tests (pinned next to torch so pip cannot swap torch). On CPU, DeepSpeed compiles a
# shared-memory communication op the first time it starts, and its CPU Adam for offload (~3 and ~5 min on 2 cores,
# cached in ~/.cache/torch_extensions); they are built here once, so the tests' own timings do not include them.
$(DS_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 -e ".[deepspeed]"
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; \
		[b is None or b.load() for b in map(a().create_op_builder, ('ShareMemCommBuilder', 'CPUAdamBuilder'))]"
	@touch $(DS_STAMP)

test-distributed: install $(DS_STAMP)
	DS_ACCELERATOR=cpu $(PYTEST) -q -m "distributed" --durations=25

test-all: install
	$(PYTEST) -q

# posttrain side by side with TRL (issue 8): first-step checks, then speed and memory of the headline scenarios at both
# libraries' defaults and best settings. Each peer runs from its own venv, benchmarks/.venv-trl-<version> (TRL 1.16,
# and 0.21 for the trainers 1.16 no longer ships), created on first use. About 1.5 h on 2 cores; BENCH_SCENARIOS narrows
# it, e.g. `make bench BENCH_SCENARIOS="sft dpo"`. Online DPO is measured against both peers (its target is TRL 0.21's). Results: benchmarks/out/compare/*-latest.md (RESULTS.md: the record).
TRL_VERSION ?= 1.16.0
BENCH_SCENARIOS ?= sft dpo kto grpo rloo online-dpo ppo
bench: install
	TRL_VERSION=$(TRL_VERSION) $(BIN)/python benchmarks/compare.py check --size small
	TRL_VERSION=$(TRL_VERSION) $(BIN)/python benchmarks/compare.py speed --size bench --steps 4 --warmup_steps 1 \
		--repeats 2 --settings default best --scenarios $(BENCH_SCENARIOS)
	$(if $(filter online-dpo,$(BENCH_SCENARIOS)),$(BIN)/python benchmarks/compare.py speed --size bench --steps 4 \
		--warmup_steps 1 --repeats 2 --settings default best --scenarios online-dpo --peer 0.21.0)

# posttrain alone: SFT with packing off and on (RESULTS.md, first section)
bench-packing: install
	$(BIN)/python benchmarks/run.py

trl-venv:
	PYTHON=$(PYTHON) benchmarks/peer/make_venv.sh $(TRL_VERSION)

# the whole side-by-side suite: every scenario (some hours)
bench-trl: install trl-venv
	TRL_VERSION=$(TRL_VERSION) $(BIN)/python benchmarks/compare.py check --size small
	TRL_VERSION=$(TRL_VERSION) $(BIN)/python benchmarks/compare.py speed --size bench

clean:
	rm -rf $(VENV) outputs .pytest_cache
