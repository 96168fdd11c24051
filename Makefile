# Cronium execution bus. Two commands on a fresh machine: `make demo` and `make test`.
# Every target installs what it needs (Debian packages, the venv, a running Docker engine, images).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := cronium_bus consumers projections tests $(wildcard bench)

.PHONY: setup host venv images demo test unit lint typecheck schemas schemas-check bench bench-quick bench-deps clean

setup: host venv images ## everything: Debian packages, Docker engine, venv, runtime images

host: ## Debian packages and a running Docker engine (idempotent)
	@bash scripts/setup-host.sh

venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing the project into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/pip install --upgrade pip >$(VENV)/install.log 2>&1
	@$(BIN)/pip install -e '.[dev]' >>$(VENV)/install.log 2>&1 || { tail -30 $(VENV)/install.log; exit 1; }
	@$(BIN)/python -c 'import cronium_bus, consumers, nats, docker, msgspec' 
	@touch $(STAMP)

images: host ## build the runtime images locally (no registry)
	@bash images/build.sh

demo: setup ## run the main job on the embedded stack and show live logs
	@bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: venv
	$(BIN)/mypy

schemas: venv ## regenerate schemas/ from the event types and deploy/clickhouse/schema.sql from the DDL
	$(BIN)/python -m cronium_bus.schemagen
	$(BIN)/python -m projections.ddl

schemas-check: venv
	$(BIN)/python -m cronium_bus.schemagen --check
	$(BIN)/python -m projections.ddl --check

test: setup lint typecheck ## the whole suite against real NATS and Docker (exit 5, no tests, fails)
	$(BIN)/pytest

unit: venv ## only the tests that need no services
	$(BIN)/pytest -m "not docker"

bench-deps: setup ## what only the benchmarks need: Debian's pssh, ansible-core from PyPI
	@bash scripts/setup-bench.sh $(BIN)

bench: bench-deps ## benchmarks against baselines, full (prints every table and ratio)
	$(BIN)/python -m bench

bench-quick: bench-deps ## benchmarks, quick mode (under two minutes)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .cronium
