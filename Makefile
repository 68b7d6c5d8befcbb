# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv on first use: torch (CPU wheel) first, then the pinned rest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.torchinductor
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench bench-real gpu-check-dry-run lint format install clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/spin-diffusion demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Real-architecture memory against the floor (docs/benchmarks.md, "Real shapes"). Not in `make bench`:
# the SD-1.5 full fine-tuning paths peak near 19 GiB of RAM; about 25 minutes on 2 cores.
bench-real: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/bench_real_shapes.py --threads 2 \
		--json docs/benchmarks/real_shapes.json --markdown docs/benchmarks/real_shapes_latest.md

# The prepared GPU check's parts, tiny, on CPU (the GPU run itself: bash benchmarks/gpu_check.sh).
gpu-check-dry-run: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/gpu_check.py --cpu-dry-run --out /tmp/gpu-check-dry-run

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
