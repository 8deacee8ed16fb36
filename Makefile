# `make demo` and `make test` work on a fresh machine: they create .venv, install torch first
# (pinned; override with TORCH_SPEC=... for a CUDA build), then effplug with the extras they need.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= lightning,hf,deepspeed,triton,data,graphs,weather,docs,dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.effplug-installed

.PHONY: install demo test test-fast lint bench clean docs plots

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/effplug demo

# TRITON_INTERPRET=1 runs every Triton kernel on the CPU against its torch reference. --dist loadfile keeps a
# test file on one worker, so the multi-process fixtures (2 gloo ranks) launch once per file.
test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

lint: $(STAMP)
	$(BIN)/ruff check effplug tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf $(VENV) build *.egg-info

# The site from docs/ (mkdocs-material, API pages from docstrings); --strict: a broken link or anchor fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# docs/plots/*.png from the benchmark JSON kept in docs/data/ (copy a new run's bench_out/*.json there first).
plots: $(STAMP)
	$(BIN)/python benchmarks/plots.py
