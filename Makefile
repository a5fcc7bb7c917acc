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
test: lint typecheck
	$(BIN)/pytest -q $(ARGS)

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
soak: $(STAMP)
	$(BIN)/python -m tests.fault.soak --messages 1000 --phones 20 --kills 3 --pg-restarts 1

# Issue 5's benchmark, under 4 minutes on 2 cores (bench/README.md): prints the
# table, writes bench/results.json and bench/latency.png. `ARGS=--quick`: seconds.
.PHONY: bench
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench]'
	@touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(ARGS)
