# livemigrate — every set-up step lives here; a fresh machine needs only `make demo` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

# TARGET=local (default) points every command at the local services started by `make services`;
# TARGET=aws leaves AWS_* and LIVEMIGRATE_* exactly as the environment / livemigrate.toml say.
TARGET ?= local
export LIVEMIGRATE_MOTO_PORT ?= 4599
export LIVEMIGRATE_ES_PORT ?= 9299
export LIVEMIGRATE_OS_PORT ?= 9399
# Which search engine the commands use (elasticsearch | opensearch) and which nodes `make
# services` starts (SEARCH: elasticsearch, opensearch or both). `make test` starts both: the
# search tests run over each engine.
LIVEMIGRATE_SEARCH_ENGINE ?= elasticsearch
ifeq ($(LIVEMIGRATE_SEARCH_ENGINE),opensearch)
SEARCH ?= opensearch
SEARCH_PORT := $(LIVEMIGRATE_OS_PORT)
else
SEARCH ?= elasticsearch
SEARCH_PORT := $(LIVEMIGRATE_ES_PORT)
endif
export SEARCH
ifeq ($(TARGET),local)
export AWS_ENDPOINT_URL ?= http://127.0.0.1:$(LIVEMIGRATE_MOTO_PORT)
export AWS_REGION ?= us-east-1
export AWS_DEFAULT_REGION ?= us-east-1
export AWS_ACCESS_KEY_ID ?= testing
export AWS_SECRET_ACCESS_KEY ?= testing
export LIVEMIGRATE_SEARCH_URL ?= http://127.0.0.1:$(SEARCH_PORT)
export LIVEMIGRATE_SEARCH_ENGINE
endif
LIVEMIGRATE := $(VENV)/bin/livemigrate
PYTEST_ARGS ?=
# The suite runs in parallel workers (pytest-xdist), each against a moto server of its own on
# LIVEMIGRATE_MOTO_PORT + worker index; Elasticsearch is shared (tests use unique index names).
TEST_WORKERS ?= 2
TEST_MOTO_PORTS := $(shell seq $(LIVEMIGRATE_MOTO_PORT) $$(( $(LIVEMIGRATE_MOTO_PORT) + $(TEST_WORKERS) - 1 )))
DEMO_ARGS ?=

.PHONY: help install services services-down status-services test check lint typecheck bench \
        demo backfill consume reverse cutover status clean ts-test package cfn-lint

help:
	@echo "make demo      run a real migration end to end on the local services"
	@echo "make test      install, start the services, run the whole test suite"
	@echo "make check     ruff + mypy --strict + tests"
	@echo "make bench     benchmarks vs plain baselines -> bench/results.json"
	@echo "make package   the Lambda deployment package -> build/livemigrate-lambda.zip (LAMBDA_ARCH=x86_64|arm64)"
	@echo "make install | services | services-down | backfill | consume | reverse | cutover | status"
	@echo "SEARCH=elasticsearch|opensearch|both picks the search nodes (make test: both);"
	@echo "LIVEMIGRATE_SEARCH_ENGINE=opensearch runs the commands (and make demo) on OpenSearch"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,kcl]'
	@touch $@

services: install
	bash infra/services.sh up

services-down:
	bash infra/services.sh down

status-services:
	bash infra/services.sh status

test: SEARCH = both
test: install ts-test
	LIVEMIGRATE_MOTO_EXTRA_PORTS="$(wordlist 2,99,$(TEST_MOTO_PORTS))" bash infra/services.sh up
	LIVEMIGRATE_TEST_MOTO_PORTS="$(TEST_MOTO_PORTS)" $(PY) -m pytest -n $(TEST_WORKERS) \
	  --dist loadgroup $(PYTEST_ARGS)

# The TypeScript client (clients/typescript): npm ci from the committed lockfile, build, the
# shared flag vectors, then its integration tests against the local services and the CLI.
# Without node/npm it is skipped with a warning; with CI=true that fails.
NPM ?= npm
TS_DIR := clients/typescript
ts-test: services
	@if ! command -v node >/dev/null 2>&1 || ! command -v $(NPM) >/dev/null 2>&1; then \
	  if [ "$$CI" = "true" ]; then \
	    echo "error: node and npm are required (CI=true): install Node.js 20+" >&2; exit 1; \
	  fi; \
	  echo "warning: node/npm not found: the TypeScript client (clients/typescript) is NOT tested" >&2; \
	else \
	  cd $(TS_DIR) && $(NPM) ci --no-audit --no-fund && $(NPM) run build && $(NPM) test \
	    && LIVEMIGRATE_CLI=$(abspath $(LIVEMIGRATE)) $(NPM) run test:integration; \
	fi

lint: install cfn-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache  # the layers: pyproject.toml [tool.importlinter]

# Every CloudFormation template (issue 15); the moto stack test runs with the tests.
cfn-lint: install
	$(VENV)/bin/cfn-lint infra/aws/*.yaml

LAMBDA_ARCH ?= x86_64
package: install
	$(PY) infra/aws/package.py $(LAMBDA_ARCH)

typecheck: install
	$(VENV)/bin/mypy livemigrate backfill stream_consumer tests bench

check: lint typecheck test

bench: SEARCH = both
bench: services
	$(PY) -m bench.run

demo: services
	$(LIVEMIGRATE) demo $(DEMO_ARGS)

backfill: install
	$(LIVEMIGRATE) backfill

consume: install
	$(LIVEMIGRATE) consume

reverse: install
	$(LIVEMIGRATE) reverse

cutover: install
	$(LIVEMIGRATE) cutover

status: install
	$(LIVEMIGRATE) status

clean: services-down
	rm -rf $(VENV) .services .mypy_cache .ruff_cache .pytest_cache build
