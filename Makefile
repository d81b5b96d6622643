# Two commands on a fresh machine: `make train` (main job, embedded default) and `make test`.
VENV ?= .venv
PY := $(if $(VENV),$(VENV)/bin/python,python3)
export PCPO_VENV := $(VENV)
export HF_HUB_OFFLINE := 1

.PHONY: setup train test test-fast lint

setup:
	@bash scripts/setup.sh

train: setup
	$(PY) -m pcpo.cli train $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check src tests benchmarks scripts
