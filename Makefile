# One-command entry points. Each target sets up .venv itself on first use, installing only what it needs:
# `make run` the package and uvloop (`.[speed]`), `make test` and the other test targets the `test` extra
# besides. A marker per install records what a venv holds, so one venv serves both: `make run` after
# `make test` installs nothing, `make test` after `make run` adds the test tools.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP_INSTALL = $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: run test lint bench clean matrix matrix-one

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	echo '*' > $(VENV)/.gitignore  # as Python 3.13's venv does: git ignores every venv, .venv-3.12 included

$(BIN)/.installed-run: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[speed]'
	touch $@

# A superset of the run install, so it renews the run marker too.
$(BIN)/.installed-test: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[test,speed]'
	touch $@ $(BIN)/.installed-run

## run: start the gateway on its embedded defaults (SQLite file, loopback, plain-http cookies)
run: $(BIN)/.installed-run
	$(BIN)/gateway serve --config config/dev.toml

## test: lint, type-check and run the whole test suite (starts its own PostgreSQL)
test: $(BIN)/.installed-test
	$(BIN)/ruff check gateway upstreams tests bench
	$(BIN)/mypy
	$(BIN)/pytest

## security: every case of the security corpus (tests/security, see docs/security-corpus.md); prints
## "N cases, A allows, F 5xx, H hangs, L leaks" and fails unless A, F, H and L are all 0
.PHONY: security
security: $(BIN)/.installed-test
	GATEWAY_SECURITY_FULL=1 GATEWAY_TEST_STRICT=1 $(BIN)/pytest tests/security -q --tb=no -rN

## faults: the fault tests in full (tests/faults: database faults, revocation feed, rolling restarts, SIGTERM);
## writes docs/reliability.md (each figure next to its goal) and fails unless every goal is met
.PHONY: faults
faults: $(BIN)/.installed-test
	GATEWAY_FAULTS_FULL=1 GATEWAY_TEST_STRICT=1 GATEWAY_FAULTS_REPORT=docs/reliability.md $(BIN)/pytest tests/faults -q

## matrix: the unit tests (those needing no PostgreSQL, proxy, browser or compiler) on every Python the package
## claims: $(PYTHON)'s version in $(VENV), the others in .venv-X.Y (the interpreter from PATH, else from
## pyenv). A missing interpreter is skipped with a note, or fails under GATEWAY_TEST_STRICT=1. MATRIX_LIGHT=1
## (CI, after make test) leaves out the modules that start a process per test, most of the time.
MATRIX_PYTHONS ?= 3.11 3.12 3.13
PYENV_ROOT ?= $(HOME)/.pyenv
MATRIX_TESTS ?= tests -m 'not postgres' --ignore=tests/deploy --ignore=tests/faults --ignore=tests/security \
	--ignore=tests/test_bench_openloop.py --ignore=tests/test_readme.py \
	$(if $(MATRIX_LIGHT),--ignore=tests/test_cli.py --ignore=tests/test_serve.py)
matrix:
	@default=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); missing=; \
	for v in $(MATRIX_PYTHONS); do \
	  if [ "$$v" = "$$default" ]; then found=$$(command -v $(PYTHON)); venv=$(VENV); else \
	    venv=.venv-$$v; found=; \
	    for py in "$$(command -v python$$v)" $$(ls -d $(PYENV_ROOT)/versions/$$v.*/bin/python$$v 2>/dev/null | sort -rV); do \
	      if [ -n "$$py" ] && "$$py" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$$v'.split('.'))))" \
	        2>/dev/null; then found=$$py; break; fi; \
	    done; \
	  fi; \
	  if [ -z "$$found" ]; then echo "matrix: no working python$$v, not tested"; missing="$$missing $$v"; continue; fi; \
	  echo "matrix: Python $$v ($$found, in $$venv)"; \
	  $(MAKE) --no-print-directory matrix-one VENV=$$venv PYTHON="$$found" || exit 1; \
	done; \
	if [ -n "$$missing" ] && [ "$$GATEWAY_TEST_STRICT" = 1 ]; then \
	  echo "matrix: Python$$missing missing (GATEWAY_TEST_STRICT=1)" >&2; exit 1; fi

matrix-one: $(BIN)/.installed-test
	$(BIN)/pytest -q -p no:cacheprovider $(MATRIX_TESTS)

## image: build the container image as localhost/forward-auth-gateway:dev without a registry (root, podman,
## mmdebstrap; the base from Debian's packages, cached under ~/.cache/forward-auth-gateway)
## image-test: build it and run it read-only as its user (tests/deploy/test_image.py)
.PHONY: image image-test
image:
	deploy/container/build-offline.sh localhost/forward-auth-gateway:dev
image-test: $(BIN)/.installed-test
	GATEWAY_TEST_IMAGE=1 GATEWAY_TEST_STRICT=1 $(BIN)/pytest tests/deploy/test_image.py -q

## bench: the check-path benchmark; writes docs/benchmarks.md
bench: $(BIN)/.installed-run
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(foreach v,$(MATRIX_PYTHONS),.venv-$(v)) .mypy_cache .ruff_cache .pytest_cache
