# Everything a fresh machine needs is installed from here (Python 3.11+, make, PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --constraint constraints.txt
STAMP := $(VENV)/.installed-stamp
PACKAGES := pyproject.toml constraints.txt layers/common/pyproject.toml local/pyproject.toml client/pyproject.toml images/inference/pyproject.toml images/training/pyproject.toml

.PHONY: all venv demo test test-unit lint format bench local clean validate

all: test

$(STAMP): $(PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the plain name would pull the multi-GB CUDA build.
	$(PIP) --quiet torch==2.13.0
	$(PIP) --quiet -e layers/common -e "local[tiny]" -e images/inference -e images/training -e client -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sdpipe local demo

local: $(STAMP)
	$(BIN)/sdpipe local up

test: $(STAMP)
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/sam validate --lint --region us-east-1

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/bench_registration.py
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_intake.py
	$(BIN)/python bench/bench_training.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .sdpipe-local
