# Quick start: `make demo` (synthetic city -> train -> eval -> viz) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mtl quickstart

# Two pytest-xdist workers of one torch thread each (tests/conftest.py): the suite's tiny models are
# bound by per-op overhead, so this takes about half the time of one process with two threads.
JOBS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal

clean:
	rm -rf $(VENV) build *.egg-info
