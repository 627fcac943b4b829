# One-command entry points. Each target sets up .venv itself on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,speed]'
	touch $@

## run: start the gateway on its embedded defaults (SQLite file, loopback, plain-http cookies)
run: $(BIN)/.installed
	$(BIN)/gateway serve --config config/dev.toml

## test: lint, type-check and run the whole test suite (starts its own PostgreSQL)
test: $(BIN)/.installed
	$(BIN)/ruff check gateway upstreams tests bench
	$(BIN)/mypy
	$(BIN)/pytest

## security: every case of the security corpus (tests/security, see docs/security-corpus.md); prints
## "N cases, A allows, F 5xx, H hangs, L leaks" and fails unless A, F, H and L are all 0
.PHONY: security
security: $(BIN)/.installed
	GATEWAY_SECURITY_FULL=1 GATEWAY_TEST_STRICT=1 $(BIN)/pytest tests/security -q --tb=no -rN

## faults: the fault tests in full (tests/faults: database faults, revocation feed, rolling restarts, SIGTERM);
## writes docs/reliability.md (each figure next to its goal) and fails unless every goal is met
.PHONY: faults
faults: $(BIN)/.installed
	GATEWAY_FAULTS_FULL=1 GATEWAY_TEST_STRICT=1 GATEWAY_FAULTS_REPORT=docs/reliability.md $(BIN)/pytest tests/faults -q

## bench: the check-path benchmark; writes docs/benchmarks.md
bench: $(BIN)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
