# Two commands for users: `make demo` and `make test`. Everything else they need is set up here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test lint typecheck unit bench redis-server docs clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $(STAMP)

venv: $(STAMP)

# The test session starts its own redis-server on a free port; install Debian's when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

lint: venv
	$(BIN)/ruff check src tests benchmarks examples

typecheck: venv
	$(BIN)/mypy

unit: venv redis-server
	$(BIN)/python -m pytest -q

test: lint typecheck unit

demo: venv
	$(BIN)/python examples/demo.py

# `make bench BENCH_ARGS=--quick` for a shorter run; wrk (Debian package) drives the HTTP part,
# pinned to one core and the servers to another where there are two. Every figure comes from
# 10,000 clients with their own keys and addresses, GET and POST (a ~400-byte chat prompt).
bench: venv redis-server
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing wrk (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

docs: venv
	$(BIN)/python docs/gen_reference.py
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
