# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# The virtualenv's interpreter: the distribution's python3 when it is 3.11 or newer and can
# make a virtualenv, else the first python3 on PATH. Debian's is built with PGO and LTO and
# linked statically; it runs proxyd's worker about a quarter faster than a plain build of the
# same version (pyenv's default), see docs/performance.md. `make PY=/path/to/python3` picks
# another; `make clean` first when .venv was made by a different one.
PY ?= $(shell if /usr/bin/python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then echo /usr/bin/python3; else echo python3; fi)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= conf/front-proxy.yaml

.PHONY: run test lint bench clean system-deps config-regen

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the benchmark and some tests use (wrk, nginx, systemd-analyze); root only.
system-deps:
	@if ! command -v wrk >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1 \
	    || ! { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light systemd) >/dev/null 2>&1 \
	      || echo "note: could not install wrk/nginx/systemd; tests that need them will say so"; \
	  fi; \
	fi

run: $(STAMP)
	$(BIN)/python -m proxyd.demo --config $(CONFIG)

# mypy's files and settings are in pyproject.toml ([tool.mypy]).
# The 25 slowest tests are listed at the end of every run (CI logs included), to show where
# the suite's time goes; extra pytest arguments: make test PYTEST_ARGS='-k retry -x'.
test: $(STAMP) system-deps
	$(BIN)/ruff check proxyd tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check proxyd tests bench
	$(BIN)/mypy

# After a change to what the config loader accepts: rewrite the public corpus's
# expectations and docs/config-coverage.md, and print the corpus figures.
config-regen: $(STAMP)
	$(BIN)/python -m tests.compat.envoy_corpus_report --envoy --write
	$(BIN)/python -m proxyd.config.coverage_doc --write

bench: $(STAMP) system-deps
	@command -v valgrind >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1; } || true
	$(BIN)/python bench/run.py
	$(BIN)/python bench/xds_scale.py
	$(BIN)/python bench/idle_memory.py
	$(BIN)/python bench/instructions.py

clean:
	rm -rf $(VENV) build *.egg-info
