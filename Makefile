# Two commands do everything on a fresh machine: `make run` and `make test`.
# Each bootstraps .venv from pyproject.toml with what it needs and no more: `make run` the runtime
# alone, `make test` the test extras too, `make bench` the bench's peers as well. Nothing relies on
# a hand-made install.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test bench soak lint clean

$(VENV)/.created:
	$(PYTHON) -c 'import sys; sys.exit("plugrpc needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

# One stamp per set of extras: installing a larger set never reinstalls a smaller one's packages.
$(VENV)/.installed-%: pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e '.$(if $(filter runtime,$*),,[$*])'
	touch $@

run: $(VENV)/.installed-runtime
	$(BIN)/plugrpc run $(ARGS)

# Line coverage of src/ (routers and plugins the tests start in subprocesses included); under 90%
# fails the whole suite. PYTEST_ARGS="-k reload" runs part of it, with coverage reported but not enforced.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered $(if $(PYTEST_ARGS),,--cov-fail-under=90) $(PYTEST_ARGS)

# `make bench` (QUICK=1 for a one-minute run, PROFILE=1 for a profile of the router under load).
bench: $(VENV)/.installed-test,bench
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(if $(PROFILE),--profile) $(BENCH_ARGS)

# `make soak` (DURATION=600 by default, SEED=N to replay a run, NATS=1 for a fleet of three routers on NATS):
# every fault at once against one router; exits non-zero if an invariant broke (bench/soak).
soak: $(VENV)/.installed-test
	$(BIN)/python -m bench.soak --duration $(or $(DURATION),600) $(if $(SEED),--seed $(SEED)) $(if $(filter 1,$(NATS)),--nats)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .coverage .coverage.*
