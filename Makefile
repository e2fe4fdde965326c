# One target per habit. `make run` runs the main job on the local profile; `make test` the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TRAIN_VENV := .venv-train
export PYTHONPATH := $(CURDIR)
export NO_PROXY := 127.0.0.1,localhost
export no_proxy := 127.0.0.1,localhost

# test files run two at a time (pytest-xdist): most of the e2e time is spent waiting on servers and
# the scheduler; a file stays on one worker, since its tests share module fixtures and build on each other
TEST_WORKERS ?= 2

.PHONY: run test test-fast lint typecheck ui up down settings bench services clean mutation

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

$(TRAIN_VENV)/.installed: requirements-train.txt
	test -x $(TRAIN_VENV)/bin/python || $(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install -q --upgrade pip
	$(TRAIN_VENV)/bin/pip install -q -r requirements-train.txt
	touch $@

install: $(VENV)/.installed $(TRAIN_VENV)/.installed

run: install
	$(VENV)/bin/python -m include.mlops.run_local

# The production shape: PostgreSQL under .local/postgres, api-server + scheduler + dag-processor +
# triggerer (LocalExecutor), MLflow; prints the UI's URL and the generated admin password once.
up: install
	$(VENV)/bin/python -m include.mlops.stack up

ui: $(VENV)/.installed
	$(VENV)/bin/python -m include.mlops.stack init
	$(VENV)/bin/python -m include.mlops.stack ui

down:
	-$(VENV)/bin/python -m include.mlops.stack down

settings: $(VENV)/.installed
	$(VENV)/bin/python -m include.mlops.stack init

# Docker engine, local registry and the offline base image, and PostgreSQL's server binaries for `make up`
# and the runtime tests, Debian's chromium (the history page's browser test) and prometheus (promtool)
# (root + apt; skipped with a reason otherwise).
# Under CI=true (.ci/run) a machine that cannot start them fails here: the CI must run the engine tests.
services:
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  bash docker/start_engine.sh && bash docker/bootstrap_base.sh && \
	  { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; } && \
	  { command -v chromium >/dev/null && command -v promtool >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium prometheus >/dev/null; }; }; \
	elif [ "$${CI:-}" = true ]; then \
	  echo "CI=true but not root or no apt-get: cannot start the Docker engine and registry the tests need" >&2; exit 1; \
	else echo "not root or no apt-get: Docker engine not started; tests that need it will skip with the reason"; fi

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

test: $(VENV)/.installed-dev $(TRAIN_VENV)/.installed services lint typecheck
	$(VENV)/bin/pytest -q --durations=12 -n $(TEST_WORKERS) --dist loadfile

# The developer loop: unit, DAG-integrity and the integration tests that take seconds (no e2e, no
# runtime, nothing marked slow); `make test` (what CI runs) is the whole suite.
test-fast: $(VENV)/.installed-dev
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) -m "not slow and not e2e and not runtime" tests/unit tests/dags tests/integration

bench: $(VENV)/.installed-dev $(TRAIN_VENV)/.installed
	for b in bench/bench_*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

# Mutation testing of the decision modules: [tool.mutmut] in pyproject.toml lists the modules and their
# unit tests. A fresh mutants/ each time: mutmut keeps old verdicts when only the tests changed.
# MUTANTS: what is run and scored, one unit per glob: a module (pkg.mod.*) or one class of a module
# (pkg.mod.x?Class?*: only that class's mutants).
MUTATION_MIN ?= 85
MUTATION_JOBS ?= $(shell nproc)
MUTANTS ?= include.mlops.registry.gate.* include.mlops.routing.placement.* include.mlops.canary.analysis.* \
	include.mlops.canary.runner.* include.mlops.data_quality.suite.* include.mlops.release_params.*
mutation: $(VENV)/.installed-dev
	rm -rf mutants && mkdir mutants
	$(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(foreach m,$(MUTANTS),'$(m)') > mutants/run.log 2>&1 || { tail -40 mutants/run.log; exit 1; }
	$(VENV)/bin/mutmut results --all true | $(VENV)/bin/python tests/mutation_score.py --min $(MUTATION_MIN) $(foreach m,$(MUTANTS),'$(m)')

clean: down
	rm -rf .local
