# citygate: `make demo` serves the embedded demo city; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo services services-stop keycloak trino-cluster nginx compose-check browser lint typecheck check test bench bench-tools clean

# The console's GraphiQL and React, pinned in gateway/console/package-lock.json: `npm ci` takes
# exactly those tarballs from the npm registry and refuses any whose SHA-512 differs, so the
# gateway serves them from its own origin and no browser asks a CDN (Node from Debian if none).
CONSOLE_MODULES := gateway/console/node_modules/.package-lock.json

# Python keeps the bytecode of what it compiles (`__pycache__/`, ignored by git), pytest its
# assertion-rewritten test modules beside it: without them every pytest process (each xdist
# worker too) compiles the project and rewrites every test module again, about 4 s of CPU each.
# Some shells and container images set PYTHONDONTWRITEBYTECODE; the checks do not inherit it.
unexport PYTHONDONTWRITEBYTECODE

install: $(STAMP) $(CONSOLE_MODULES)

$(CONSOLE_MODULES): gateway/console/package-lock.json
	@command -v npm >/dev/null || { echo "[make] installing Node.js and npm for the console's assets"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm >/dev/null; }
	cd gateway/console && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts

$(STAMP): pyproject.toml
	@echo "[make] creating $(VENV) and installing citygate with its dev dependencies"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# `make demo PORT=8001` serves on another port (default 8000); HOST likewise.
demo: install
	$(BIN)/citygate demo $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))

services: install
	$(BIN)/python -m tools.services start

services-stop:
	$(BIN)/python -m tools.services stop

# Keycloak (port 8180) and a Trino coordinator with one worker (8090, 8091) on their own; `make
# services` starts them too, beside the databases.
keycloak: install
	$(BIN)/python -m tools.services start --only keycloak

trino-cluster: install
	$(BIN)/python -m tools.services start --only trino-cluster

# The load balancer of the scale-out test (tests/test_scale_out.py), nginx from Debian.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { echo "[make] installing nginx for the scale-out test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light >/dev/null; }; }

# The browser tests (tests/test_console_browser.py) drive Debian's chromium with Playwright for
# Python (a dev dependency); Playwright's own browser download is never used. The CJK font lets
# the screenshots show Chinese text.
browser:
	@command -v chromium >/dev/null && fc-list :lang=zh | grep -q . || { echo "[make] installing chromium and a CJK font for the browser tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-wqy-microhei >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-wqy-microhei >/dev/null; }; }

# Docker cannot run here; Debian's docker-compose validates the deployment without an engine.
compose-check:
	@command -v docker-compose >/dev/null || { echo "[make] installing docker-compose to validate compose/"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null; }; }
	docker-compose --env-file compose/example.env -f compose/docker-compose.yml config -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The fast layer: lint, types and every test that needs no service and is not slow (tests/conftest.py
# marks the others `services`; `slow` ones start citygate processes or run long samples), on every
# core; no database, no Trino, no browser (docs/development.md says what it costs). `make test` runs every test.
# mypy runs beside the tests: it takes one core, about 20 s without its cache (.mypy_cache, kept
# between runs), which the tests would otherwise wait for with the other core idle.
check: install lint
	$(BIN)/mypy & mypy=$$!; \
	$(BIN)/python -m pytest -m "not services and not slow" -n auto -q; tests=$$?; \
	wait $$mypy && exit $$tests

test: install services browser nginx compose-check lint typecheck
	$(BIN)/python -m pytest

# Benchmarks against the services (started if needed); not part of `make test`. They also need
# the plots' matplotlib (the `bench` extra), wrk (Debian) and the peer, PostGraphile, pinned in
# bench/peer/package-lock.json and installed with `npm ci` (Node from Debian if there is none).
BENCH_STAMP := $(VENV)/.bench-installed
PEER_MODULES := bench/peer/node_modules/.package-lock.json

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

$(PEER_MODULES): bench/peer/package-lock.json
	@command -v npm >/dev/null || { echo "[make] installing Node.js and npm for the benchmark's peer"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm >/dev/null; }
	cd bench/peer && npm ci --no-audit --no-fund --loglevel=error

bench-tools:
	@command -v wrk >/dev/null || { echo "[make] installing wrk, the benchmark's load generator"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null; }; }

bench: install services $(BENCH_STAMP) $(PEER_MODULES) bench-tools
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache gateway/console/node_modules
