# Everything a fresh machine needs is installed from here (Python 3.11+, make, PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs (45 s here against pip's 140 s, cold cache), with the sources pip is configured
# with (tools/pip_sources.py: uv reads no pip configuration) and pip's way of choosing among
# indexes. It byte-compiles: the local stack runs every process with PYTHONDONTWRITEBYTECODE, as
# Lambda does, so what is not compiled here is compiled again on every import.
UV_VERSION := 0.13.9
INSTALL = $(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode \
	--index-strategy unsafe-best-match $(shell $(PYTHON) tools/pip_sources.py) --constraint constraints.txt
STAMP := $(VENV)/.installed-stamp
PACKAGES := pyproject.toml constraints.txt layers/common/pyproject.toml local/pyproject.toml client/pyproject.toml images/inference/pyproject.toml images/training/pyproject.toml
# `sam build` needs the Lambda runtime's Python: pyenv's python3.12, else one on PATH (a pyenv
# shim is not enough: sam's validation refuses it).
PYTHON312 ?= $(or $(lastword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12)),$(shell command -v python3.12 2>/dev/null | grep -v /shims/))
BUILT := .aws-sam/build/template.yaml
RUNTIME_SDK := .aws-sam/runtime-sdk
STACK_NAME ?= sdpipe

.PHONY: all venv demo test test-unit lint format bench bench-gpu local clean validate build images fuzz asl

all: test

$(STAMP): $(PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	# torch pinned: the plain name would pull the multi-GB CUDA build.
	$(INSTALL) torch==2.13.0 -e layers/common -e "local[tiny]" -e images/inference -e images/training -e client -e .
	# For its CLIP BPE merges file only (sdpipe_inference.family_configs): the package is never imported.
	$(INSTALL) --no-deps open_clip_torch
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sdpipe local demo

local: $(STAMP)
	$(BIN)/sdpipe local up

# The tiers run on pytest-xdist workers, a test file on one worker. Two runs, because moto's
# backends are global to a process: the in-process moto of the unit tier resets them, which would
# pull the ground from under a worker's local stack (each integration worker runs its own). The
# integration tier is CPU-bound on two cores (endpoint and training containers): two workers.
UNIT_WORKERS ?= 3
STACK_WORKERS ?= 2

test: $(STAMP) build
	$(BIN)/python -m pytest -n $(UNIT_WORKERS) --dist loadfile tests --ignore=tests/integration
	$(BIN)/python -m pytest -n $(STACK_WORKERS) --dist loadfile --no-loadscope-reorder tests/integration

# The Lambda artefacts as `sam deploy` uploads them, and the SDK the runtime would provide (the
# tests import every built function with only these on the path). Without python3.12 the build is
# skipped here and its tests say so; CI (CI=true) must build.
build: $(STAMP)
ifneq ($(PYTHON312),)
	PATH="$(dir $(PYTHON312)):$$PATH" SAM_CLI_TELEMETRY=0 $(BIN)/sam build --region us-east-1
	@if [ ! -f $(RUNTIME_SDK)/.stamp ] || [ layers/common/runtime-sdk.txt -nt $(RUNTIME_SDK)/.stamp ]; then \
		rm -rf $(RUNTIME_SDK) && $(PYTHON312) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
			--target $(RUNTIME_SDK) --requirement layers/common/runtime-sdk.txt && touch $(RUNTIME_SDK)/.stamp; \
	fi
else
	@if [ "$$CI" = "true" ]; then echo "sam build needs python3.12 (the Lambda runtime), and CI has none" >&2; exit 1; fi
	@echo "no python3.12 on PATH or under pyenv: skipping sam build (its tests will be skipped)"
endif

# Build both container images with Docker and push them to the stack's ECR repositories,
# tagged with the commit and latest (after `sam deploy`; needs Docker and AWS credentials).
images: $(STAMP)
	$(BIN)/sdpipe --stack $(STACK_NAME) images push

# Coverage-guided fuzzing of the intake inspectors, FUZZ_SECONDS each (make test runs a short
# seeded run of the same targets). Crashing inputs land in .fuzz/.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	mkdir -p .fuzz
	for target in pickle safetensors url; do \
		$(BIN)/python -m tests.fuzz.fuzz_inspectors $$target -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
			-rss_limit_mb=2048 -artifact_prefix=.fuzz/$$target- || exit 1; \
	done

test-unit: $(STAMP)
	$(BIN)/python -m pytest -n $(UNIT_WORKERS) --dist loadfile tests/unit --cov=sdpipe.logic --cov-report=term

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/sam validate --lint --region us-east-1

# The shared workflow fragments (statemachines/fragments/) copied into every *.asl.json.
asl: $(STAMP)
	$(BIN)/python -m tools.asl

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) build
	$(BIN)/python bench/bench_cold_import.py
	$(BIN)/python bench/bench_registration.py
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_intake.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_scanners.py

# The GPU benchmark (bench/bench_gpu.py): on a CUDA machine, with a Python whose torch has CUDA
# (BENCH_PYTHON=python3 with diffusers, transformers, peft, moto, boto3 and pydantic beside it);
# SMOKE=1 runs the same code on the CPU with tiny models (the tests run it too).
BENCH_PYTHON ?= $(BIN)/python
bench-gpu: $(if $(filter $(BENCH_PYTHON),$(BIN)/python),$(STAMP))
	PYTHONPATH="layers/common:images/inference:images/training:local:client:$$PYTHONPATH" \
		$(BENCH_PYTHON) bench/bench_gpu.py $(if $(SMOKE),--smoke) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .sdpipe-local
