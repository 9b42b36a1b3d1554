# Two commands do everything on a fresh machine:
#   make demo   set up what is missing, pretrain MoCo v2 on Fashion-MNIST, print the kNN table
#   make test   set up what is missing, run the test suite
# Each sets up only what is missing: a second run installs nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sslkit-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# No OMP_NUM_THREADS here: sslkit splits the usable cores itself (sslkit/engine/hardware.py); set it to override.

.PHONY: setup data demo test test-slow test-all lint bench clean chromium mutation

setup: $(STAMP) data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changes. torch/torchvision come from this machine's disk.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

data: $(FMNIST)

$(FMNIST):
	@if [ "$$(id -u)" = "0" ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or set SSLKIT_DATA and pass data.download=true"; exit 1; \
	fi

demo: setup
	$(BIN)/sslkit demo

test: setup
	$(BIN)/pytest -q

# The report's browser test needs Debian's chromium: installed here when missing (as root only).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "chromium is missing (sudo apt-get install chromium); its test will be skipped"; fi

test-slow: setup chromium
	$(BIN)/pytest -q -m slow

test-all: setup chromium
	$(BIN)/pytest -q -m "slow or not slow"

# Mutation testing of the core (cosmic-ray's mutants, each run against the tests of `make test` that execute
# its line; mutation/run.py, mutation/forkrun.py); not part of `make test`. One shard: make mutation SHARD=engine;
# a sample of each module: make mutation SHARD=engine ARGS=--sample=50. Results: docs/testing.md.
mutation: setup
	nice -n 19 $(BIN)/python mutation/run.py $(ARGS) $(SHARD)

# ruff, then mypy over the installed layout (tools/typecheck.py; settings in pyproject's [tool.mypy])
lint: setup
	$(BIN)/ruff check .
	$(BIN)/python tools/typecheck.py

clean:
	rm -rf runs .pytest_cache .typecheck
