# Two commands from a fresh clone: `make run` and `make test`.
# Both create .venv if missing and (re)install when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test typecheck lint soak schema

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(STAMP)
	$(BIN)/smsdora migrate && $(BIN)/smsdora serve

# Extra pytest arguments: make test ARGS='-k lifecycle -x'
# The suite runs in TEST_WORKERS processes (pytest-xdist; `auto`: one a core),
# each with its own database on the shared server: make test TEST_WORKERS=0
# runs it in this one process.
TEST_WORKERS ?= auto
test: lint typecheck nginx chromium nats
	$(BIN)/pytest -q -n $(TEST_WORKERS) $(ARGS)

# tests/proxy runs docs/nginx/smsdora.conf through a real nginx: Debian's
# package, installed when missing (as root, or through sudo -n). A machine
# that cannot install it fails here, loudly: the proxy tests are never skipped.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
.PHONY: nginx
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { \
	  echo "make nginx: installing Debian's nginx for tests/proxy"; \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq nginx >/dev/null; } || { \
	  echo "make nginx: could not install nginx (apt-get install -y nginx, as root);" \
	       "tests/proxy needs it" >&2; exit 1; }; }

# tests/broker/test_cluster_bus.py runs the NATS bus against a real
# nats-server (Debian's), installed when missing, as nginx is. A machine that
# cannot install it fails here, loudly: the NATS bus tests are never skipped.
.PHONY: nats
nats:
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || { \
	  echo "make nats: installing Debian's nats-server for tests/broker/test_cluster_bus.py"; \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq nats-server >/dev/null; } || { \
	  echo "make nats: could not install nats-server (apt-get install -y nats-server, as root);" \
	       "the NATS bus tests need it" >&2; exit 1; }; }

# tests/browser drives Debian's chromium through Playwright (never
# `playwright install`, which downloads a browser): installed when missing,
# as nginx is. A machine that cannot install it fails here, loudly.
.PHONY: chromium
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "make chromium: installing Debian's chromium for tests/browser"; \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $(SUDO) apt-get install -y -qq chromium >/dev/null; } || { \
	  echo "make chromium: could not install chromium (apt-get install -y chromium, as root);" \
	       "tests/browser needs it at /usr/bin/chromium" >&2; exit 1; }; }

# STYLE.md: strict typing (pyproject.toml [tool.mypy]; asyncpg through asyncpg-stubs).
typecheck: $(STAMP)
	$(BIN)/mypy broker protocol

# pyproject.toml [tool.ruff]: the rules a reviewer would apply by hand.
lint: $(STAMP)
	$(BIN)/ruff check broker protocol tests bench

# schema.sql: the full current schema, dumped from a freshly migrated scratch
# database (broker/store/dump_schema.py); tests/broker/test_migrate.py fails
# when it is stale. Run it after adding a migration.
schema: $(STAMP)
	$(BIN)/python -m broker.store.dump_schema

# Issue 4's soak, full form (tests/fault/soak.py); a short form runs in `make test`.
# Then three nodes (CONTRACT section 13) on the NATS bus: two node kills (down a
# while, their phones moving to the others), a kill, a PostgreSQL restart. The
# short 3-node form in `make test` runs on the PostgreSQL bus.
soak: $(STAMP) nats
	$(BIN)/python -m tests.fault.soak --messages 1000 --phones 20 --kills 3 --pg-restarts 1
	$(BIN)/python -m tests.fault.soak --nodes 3 --bus nats --messages 1000 --phones 20 \
	  --kills 1 --node-kills 2 --pg-restarts 1

# Issue 5's benchmark, under 5 minutes on 2 cores (bench/README.md): prints the
# table, writes bench/results.json and bench/latency.png. `ARGS=--quick`: seconds.
.PHONY: bench
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench]'
	@touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(ARGS)
