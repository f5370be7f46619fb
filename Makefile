# Every target sets up what it needs from nothing: a virtual environment in
# .venv, the CPU torch wheel (installs offline, fast), the compiled extension.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# 2-thread torch ops stall on a busy 2-core machine under the default OpenMP
# wait policy (docs/design.md §7); PASSIVE removes the stall.
export OMP_WAIT_POLICY ?= PASSIVE
TORCH_SPEC ?= torch==2.13.0
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' 2>/dev/null)

.PHONY: all demo test test-fast lint typecheck format bench build cuda-check clean

all: build

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]" --no-build-isolation
	# An independent K-FAC (curvlinops) for the factor cross-check test; pinned
	# to the installed torch, or its torchvision dependency upgrades torch.
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt curvlinops-for-pytorch transformers
	# curvlinops pulls in PyPI's torchvision (via backpack, which imports it only in its
	# examples): built against the CUDA torch, it fails to load next to the CPU wheel
	# ("operator torchvision::nms does not exist") and then breaks `import transformers`'
	# models. Nothing here uses it.
	$(PY) -m pip uninstall -q -y torchvision
	# kfac-pytorch is not on the package index (its README installs from source), so
	# tests/test_dropin_examples.py runs only where a clone sits in third_party/kfac-pytorch.
	# SOAP (heavyball) for `kfac-ext train --optimizer soap`, the same pin.
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt heavyball
	touch $@

# Incremental rebuild (ninja only recompiles what changed). flock keeps
# concurrent builds of the same tree from clobbering one another.
build: $(VENV)/.installed
	flock /tmp/kfac_ext_build.lock $(PY) setup.py -q build_ext --inplace

# The linter and the type checker first: they take seconds and name the line;
# their rules are in pyproject.toml ([tool.ruff], [tool.mypy]).
test: build cuda-check lint typecheck
	$(PY) -m pytest -q tests

# Lint rules, and the layout `make format` gives.
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# mypy on the K-FAC core (kfac_ext/*.py); the files and strictness are in pyproject.toml.
typecheck: $(VENV)/.installed
	$(PY) -m mypy

# The tree-wide mechanical rewrite: ruff's safe fixes (import order, pyupgrade,
# unused imports), then the formatter. Run it before committing; `make lint` fails
# on anything it would change.
format: $(VENV)/.installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-fast: build
	$(PY) -m pytest -q -x tests -m "not slow"

# Two races, a table and kfac_ext_demo.png: the digits CNN (K-FAC is not first) and the
# autoencoder to a loss SGD and AdamW do not reach in the budget (K-FAC is); why:
# docs/training-races.md.
demo: build
	$(PY) -m kfac_ext.app.demo

bench: build
	$(PY) benchmarks/run_all.py

cuda-check: $(VENV)/.installed
	bash tools/cuda_check.sh

clean:
	rm -rf build kfac_ext/*.so kfac_ext/placement/*.so *.egg-info
