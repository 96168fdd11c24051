# Cronium execution bus. Two commands on a fresh machine: `make demo` and `make test`.
# Every target installs what it needs (Debian packages, the venv, a running Docker engine, images).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := cronium_bus consumers projections tests scripts $(wildcard bench)
# The lock: every Python package of the venv (runtime, dev tools, benchmarks, pip, setuptools),
# exact versions with hashes, for every supported platform and Python (uv's universal mode).
LOCK := requirements/dev.txt
RUNTIME_LOCK := requirements/runtime.txt
# The resolver `make lock` uses; it lives in .tools/, never in the project's venv.
UV_VERSION := 0.13.9
UV := .tools/bin/uv
UV_COMPILE := $(UV) pip compile --universal --generate-hashes --python-version 3.11 --quiet

.PHONY: setup host venv images web web-check demo test unit lint typecheck schemas schemas-check lock lock-check bench bench-quick bench-deps clean

setup: host venv images ## everything: Debian packages, Docker engine, venv, runtime images

host: ## Debian packages and a running Docker engine (idempotent)
	@bash scripts/setup-host.sh

venv: $(STAMP)
# A fresh venv whenever the lock changes: exactly the lock, hash-checked, nothing left over.
# The project itself goes in editable, offline, with the locked setuptools (no build isolation,
# so nothing unlocked is fetched to build it).
$(STAMP): $(LOCK) pyproject.toml
	@rm -rf $(VENV)
	@$(PYTHON) -m venv $(VENV)
	@echo "[setup] installing $(LOCK) into a fresh $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --require-hashes --no-deps -r $(LOCK) >$(VENV)/install.log 2>&1 \
	  || { tail -30 $(VENV)/install.log; exit 1; }
	@$(BIN)/python -m pip install --no-deps --no-build-isolation --no-index -e . >>$(VENV)/install.log 2>&1 \
	  || { tail -30 $(VENV)/install.log; exit 1; }
	@$(BIN)/python -m pip check >>$(VENV)/install.log 2>&1 \
	  || { tail -10 $(VENV)/install.log; echo "[setup] the lock misses a dependency: run make lock"; exit 1; }
	@$(BIN)/python scripts/lockcheck.py $(LOCK)
	@touch $(STAMP)

lock-check: venv ## fail when the venv's packages differ from the lock in any way
	@$(BIN)/python scripts/lockcheck.py $(LOCK)
	@$(BIN)/python -m pip check

$(UV):
	@$(PYTHON) -m venv .tools
	@.tools/bin/pip install --quiet uv==$(UV_VERSION)

# Re-resolve on purpose. Pins already in the lock are kept; to move one package:
#   make lock UPGRADE='--upgrade-package msgspec'      (everything: UPGRADE=--upgrade)
lock: $(UV) ## re-resolve requirements/*.txt from pyproject.toml's ranges (keeps pins unless UPGRADE)
	$(UV_COMPILE) $(UPGRADE) pyproject.toml requirements/tools.in --extra dev --extra bench -o $(LOCK)
	$(UV_COMPILE) pyproject.toml requirements/tools.in -c $(LOCK) -o $(RUNTIME_LOCK)
	@echo "lock written: commit requirements/ together with pyproject.toml"

images: host ## build the runtime images locally (no registry)
	@bash images/build.sh

# The web console: web/src built with esbuild (versions from web/package-lock.json, npm ci) into
# web/dist, which is committed, so running needs no Node; web-check rebuilds it aside and fails
# when the committed files differ from what web/src builds to.
WEB_MODULES := web/node_modules/.package-lock.json
$(WEB_MODULES): web/package-lock.json web/package.json
	@command -v npm >/dev/null || bash scripts/setup-host.sh
	@cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

web: $(WEB_MODULES) ## rebuild the web console's web/dist from web/src (commit the result)
	@rm -rf web/dist && mkdir -p web/dist
	@cd web && OUT=dist npm run --silent build

web-check: $(WEB_MODULES) ## fail when web/dist is not what web/src builds to
	@rm -rf web/.check && mkdir -p web/.check
	@cd web && OUT=.check npm run --silent build
	@diff -r web/dist web/.check >/dev/null \
	  || { rm -rf web/.check; echo "web/dist is stale: run make web and commit web/dist"; exit 1; }
	@rm -rf web/.check

demo: setup ## run the main job on the embedded stack and show live logs
	@bash scripts/demo.sh

lint: venv
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: venv
	$(BIN)/mypy

schemas: venv ## regenerate schemas/ from the event types and deploy/clickhouse/schema.sql from the DDL
	$(BIN)/python -m cronium_bus.schemagen write
	$(BIN)/python -m projections.ddl write

schemas-check: venv
	$(BIN)/python -m cronium_bus.schemagen check
	$(BIN)/python -m projections.ddl check

test: setup lock-check lint typecheck schemas-check web-check ## the whole suite against real NATS and Docker (exit 5, no tests, fails)
	$(BIN)/pytest

unit: venv ## only the tests that need no services
	$(BIN)/pytest -m "not docker"

bench-deps: setup ## what only the benchmarks need: Debian's pssh (ansible-core is in the lock)
	@bash scripts/setup-bench.sh $(BIN)

bench: bench-deps ## benchmarks against baselines, full (prints every table and ratio)
	$(BIN)/python -m bench

bench-quick: bench-deps ## benchmarks, quick mode (under two minutes)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache .hypothesis .cronium
