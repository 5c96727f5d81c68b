# imred: the README's commands. `make demo` and `make test` set everything up first.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
DEMO := data/demo

.PHONY: setup demo test lint bench-dag bench-demo bench-combine bench-coadd clean-demo

setup:
	@bash scripts/setup.sh

# Simulate the demo night (once; deterministic) and reduce it.
demo: setup
	@if [ ! -d $(DEMO)/raw ]; then \
	  $(BIN)/imred simulate config/scenarios/demo.yaml --out $(DEMO); fi
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)
	@echo "imred: done. Products are under results/demo/: start with results/demo/*/summary.md (observation log: results/demo/obslog.tsv)."

# Unit, workflow and integration tests, including lint (ruff, snakefmt, snakemake --lint).
test: setup
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

lint: setup
	@$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/snakefmt --check Snakefile rules/

# How long `snakemake -n` takes for 250, 1000 and 2000 frames x 4 chips.
bench-dag: setup
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/dag_scale.py

# Simulate the demo night, reduce it and score every product against the truth.
bench-demo: setup
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python tests/benchmarks/demo_score.py

# The master combine against ccdproc.combine and numpy (throughput, peak memory).
bench-combine: setup
	@$(BIN)/python tests/benchmarks/combine.py

# SWarp and reproject coadd paths on the same inputs (time, memory, flux, noise)
bench-coadd: setup
	@$(BIN)/python tests/benchmarks/coadd.py

clean-demo:
	rm -rf $(DEMO) results/demo logs benchmarks
