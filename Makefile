# The README's commands. CI calls `make test` unchanged (see .ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := redis-server prometheus prometheus-alertmanager chromium

.PHONY: all venv system-deps demo test test-fast lint bench zoo stack dashboards screenshots clean

all: test

# Two stamps: the runtime (what `demo` needs) and the test extras on top of it, so `make test`
# after `make demo` still installs ruff, mypy, hypothesis and the Grafana SDK.
TEST_EXTRAS := $(VENV)/.test-extras

$(BIN)/churnwatch: pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(TEST_EXTRAS): $(BIN)/churnwatch pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(TEST_EXTRAS)

# The real servers the tests start on free loopback ports.
system-deps:
	@missing=""; \
	for b in redis-server prometheus promtool amtool chromium; do \
	  command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; \
	done; \
	command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
	  || missing="$$missing alertmanager"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	fi

demo: $(BIN)/churnwatch
	$(BIN)/churnwatch demo

test: venv system-deps
	$(BIN)/pytest

test-fast: venv
	$(BIN)/pytest -m "not slow"

lint: venv
	$(BIN)/ruff check churnwatch dataflows state metrics web dashboards tests bench
	$(BIN)/mypy churnwatch/core

bench: venv system-deps
	$(BIN)/python -m bench.run

# The backtest on every log of the zoo (CDNOW, simulated regimes), side by side: var/zoo/zoo.md.
zoo: venv
	$(BIN)/python -m bench.zoo

# The whole chain without Docker: redis, churnwatch run, the simulator, Prometheus, Alertmanager.
stack: venv system-deps
	$(BIN)/churnwatch stack

# Pictures of the customer-success pages for README and docs/worklist.md (headless Chromium).
screenshots: venv system-deps
	$(BIN)/python tests/screenshots.py

dashboards: venv
	$(BIN)/python -m churnwatch.dashboards.build

clean:
	rm -rf $(VENV) build *.egg-info var
