# Quick start: `make demo` (synthetic city -> train -> eval -> viz) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo lint test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mtl quickstart

# ruff (lint + format check) and mypy on the package, configured in pyproject.toml; the same hooks run
# from .pre-commit-config.yaml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy mtlcli

# Two pytest-xdist workers of one torch thread each (tests/conftest.py): the suite's tiny models are
# bound by per-op overhead, so this takes about half the time of one process with two threads.
JOBS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal

clean:
	rm -rf $(VENV) build *.egg-info
