# Quick start:  make demo   (set up, then run the main job)
#               make test   (set up, then run the test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

# torch==2.13.0 goes in first: an unpinned torch (pulled by any dependency) is a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml setup.py updelta/_ext/fused.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,dev]'
	touch $@

demo: setup
	$(BIN)/updelta demo

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: setup
	$(BIN)/python benchmarks/bench_diff.py

clean:
	rm -rf $(VENV) build *.egg-info updelta/*.so
