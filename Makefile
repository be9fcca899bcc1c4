# Two commands do everything on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv from pyproject.toml first; nothing relies on a hand-made install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("plugrpc needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/plugrpc run $(ARGS)

# Line coverage of src/ (routers the tests start in subprocesses included); under 90% fails the
# whole suite. PYTEST_ARGS="-k reload" runs part of it, with coverage reported but not enforced.
test: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered $(if $(PYTEST_ARGS),,--cov-fail-under=90) $(PYTEST_ARGS)

# `make bench` (QUICK=1 for a one-minute run, PROFILE=1 for a profile of the router under load).
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(if $(PROFILE),--profile) $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .coverage .coverage.*
