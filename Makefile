# Every target builds its own virtualenv from nothing (python3 -m venv + pip).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit processes clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

## demo: three nodes on loopback: seeds, every receive mode, request/reply, a node dying
demo: $(STAMP)
	$(BIN)/python examples/three_nodes.py

## test: the whole suite: lint, types, unit tests and the multi-process tests
test: lint typecheck $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check smartroute tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy smartroute

## unit: only the fast tests of the pure core (no processes)
unit: $(STAMP)
	$(BIN)/python -m pytest -m "not processes"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
