# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Three workers on two cores: most scenario tests wait on leases, timers and emulated pods
# rather than compute (the suite uses about 40% of two cores), and work stealing keeps the
# long chaos runs from leaving a worker idle at the end.
PYTEST_ARGS ?= -n 3 --dist worksteal
DEMO_ARGS ?=

.PHONY: test demo install install-demo redis-server lint typecheck unit constraints clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The stamp files re-run an install only when the dependency set changes.
$(VENV)/.test-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[test,demo]'
	touch $@

$(VENV)/.demo-installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[demo]'
	touch $@

install: $(VENV)/.test-installed
install-demo: $(VENV)/.demo-installed

# Debian's redis-server: the tests start real servers (one per simulated cluster).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server; }
	@redis-server --version

lint: install
	$(BIN)/ruff check sidecar tests $(wildcard bench initwait)
	$(BIN)/ruff format --check sidecar tests $(wildcard bench initwait)

typecheck: install
	$(BIN)/mypy

test: install redis-server lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

demo: install-demo
	$(BIN)/cache-buster demo $(DEMO_ARGS)

# Regenerate the pins after changing dependencies in pyproject.toml.
constraints: $(BIN)/python
	$(PIP) install -q -e '.[test,demo]'
	$(PIP) freeze --exclude-editable | grep -v '^cache-buster' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
