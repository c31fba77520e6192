# The commands users type. State (servers, external storage, DAGSTER_HOME) lives in .marketplace/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STATE := $(abspath .marketplace)
export DAGSTER_HOME := $(STATE)/dagster_home
STAMP := $(VENV)/.installed

NODE_STAMP := node_modules/.installed

.PHONY: install demo demo-rollback dev dev-postgres lint test test-fast stop bench wheel screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dagster,test]'
	touch $(STAMP)

# Our modules' bytecode, kept current: where PYTHONDONTWRITEBYTECODE is set (many containers,
# this machine) every run process would compile them again (0.3 s of CPU each).
install: $(STAMP)
	@$(PY) -m compileall -q marketplace marketplace_dagster

# Azurite (Azure Storage emulator) for the ADLS tests, from the npm registry with this machine's Node.js.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The embedded instance (no telemetry, queued runs dequeued within a second); settings a user
# added to the file are kept.
$(DAGSTER_HOME)/dagster.yaml: harness/local_dagster.py | $(STAMP)
	@$(PY) -m harness.local_dagster $(DAGSTER_HOME) >/dev/null

# The demo's webhook secret (local loopback servers only); set your own in the environment.
export MARKETPLACE_DEMO_WEBHOOK_SECRET ?= demo-webhook-secret-not-for-production

## make demo: local MLflow servers, demo models, today's partitions synced, a summary printed.
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m harness.demo all

## make demo-rollback: roll the demo's dev01/iris_classifier back in its workspace (forward again the
## next time), sync dev01, and print the marketplace and its production history before and after.
demo-rollback: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m harness.demo up
	$(PY) -m harness.demo seed
	$(PY) -m harness.demo rollback

## make dev: the Dagster UI (http://127.0.0.1:3000) on the same demo and instance, with the webhook
## receiver (marketplace-webhooks) beside it.
dev: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m harness.demo up
	$(PY) -m harness.demo seed
	$(PY) -m harness.demo webhooks
	$(PY) -m harness.demo dev

## make dev-postgres: make dev on the production shape: a local PostgreSQL (harness/postgres.py) under the
## marketplace registry (4 workers) and the Dagster instance (deploy/dagster.yaml, its run queue).
dev-postgres: install
	$(PY) -m harness.dev_postgres dev

## make lint: ruff's rules and formatting over the whole tree (part of test and test-fast).
lint: install
	$(PY) -m ruff check --quiet .
	$(PY) -m ruff format --check --quiet .

## make test: the whole suite on two workers, each with its own MLflow servers, S3 and Azure Storage
## emulators on free ports; the longest files start first (marketplace_tests/conftest.py).
test: lint $(NODE_STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

## make test-fast: marketplace_tests/unit, the tests that start no server, process or browser
## (configuration, decisions, layout, manifests, scanning, signatures, schedules): under two minutes.
test-fast: lint $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m pytest marketplace_tests/unit

## make screenshots: the README's pictures of the catalog page and a model card, from the running demo
## (after make demo; needs Debian's chromium).
screenshots: install
	$(PY) -m harness.screenshots

## make stop: stop the demo's MLflow servers.
stop:
	@if [ -x $(PY) ]; then $(PY) -m harness.demo stop && $(PY) -m harness.dev_postgres stop; \
	else echo "nothing to stop"; fi

## make bench: the benchmark suite (its own servers); writes benchmarks/results.json and BENCHMARKS.md.
bench: install $(DAGSTER_HOME)/dagster.yaml
	$(PY) -m benchmarks.run

## make wheel: the package's wheel in dist/, for the Databricks export job (docs/databricks.md).
wheel: install
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	@ls dist/*.whl
