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
DEMO_ARGS ?=

.PHONY: help install services services-down status-services test check lint typecheck bench \
        demo backfill consume reverse cutover status clean

help:
	@echo "make demo      run a real migration end to end on the local services"
	@echo "make test      install, start the services, run the whole test suite"
	@echo "make check     ruff + mypy --strict + tests"
	@echo "make bench     benchmarks vs plain baselines -> bench/results.json"
	@echo "make install | services | services-down | backfill | consume | reverse | cutover | status"
	@echo "SEARCH=elasticsearch|opensearch|both picks the search nodes (make test: both);"
	@echo "LIVEMIGRATE_SEARCH_ENGINE=opensearch runs the commands (and make demo) on OpenSearch"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

services: install
	bash infra/services.sh up

services-down:
	bash infra/services.sh down

status-services:
	bash infra/services.sh status

test: SEARCH = both
test: services
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

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
	rm -rf $(VENV) .services .mypy_cache .ruff_cache .pytest_cache
