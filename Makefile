# allotment's two front doors: `make run` (the embedded default) and `make test` (everything).
# Every target installs what it needs itself, so both work on a brand-new machine.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test setup contract-deps bench-deps lint typecheck cluster-up cluster-down clean

## Run `allotment dev` over examples/: an embedded SQLite ledger, sidecar on 127.0.0.1:8888.
run: setup
	$(BIN)/allotment dev examples/

## Set up everything and run the whole suite: lint, types, import layers, every test tier.
test: setup contract-deps bench-deps lint typecheck
	$(BIN)/python -m pytest

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --pre -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

## The real OpenMeter JavaScript SDKs for tests/contract (current and 1.0.0-beta.185).
contract-deps: tests/contract/node_modules/.installed

tests/contract/node_modules/.installed: tests/contract/package-lock.json
	cd tests/contract && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## wrk (Debian's), the sidecar bench's closed-loop generator, whose script a test runs.
bench-deps:
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tests/lint_imports.py

typecheck: setup
	$(BIN)/mypy

## A real etcd + kube-apiserver on loopback (built once from the Go module proxy, then cached).
cluster-up: setup
	$(BIN)/python -m tests.harness.cluster up

cluster-down:
	$(BIN)/python -m tests.harness.cluster down

clean:
	rm -rf $(VENV) .local
