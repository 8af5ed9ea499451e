# ownfeed: `make run` starts the service on the sandbox, `make test` runs every test,
# `make bench` measures it and writes bench/results.json and docs/benchmarks.md.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium
HOST ?= 127.0.0.1
PORT ?= 5000
# apt-get needs root; a developer who is not root gets sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint format install install-dev chromium wrk bench bench-smoke soak clean

run: install
	$(BIN)/flask --app app run --host $(HOST) --port $(PORT)

test: install-dev chromium
	CHROMIUM=$(CHROMIUM) $(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

install: $(BIN)/.installed

install-dev: $(BIN)/.installed-dev

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(BIN)/.installed-dev: requirements-dev.txt $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# Debian's chromium: Playwright drives it through executable_path, because
# Playwright's own browser download cannot be fetched here.
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; \
	fi

# Runs every benchmark case (several minutes) against a local stand-in for the
# Instagram API, and rewrites bench/results.json and docs/benchmarks.md.
bench: install-dev wrk
	$(BIN)/python -m bench.run

# The harness with tiny numbers, as `make test` runs it (no figure is meaningful).
bench-smoke: install-dev
	$(BIN)/pytest tests/test_bench_smoke.py tests/test_bench_load.py

# Debian's wrk, the load generator of `make bench`.
wrk:
	@if ! command -v wrk >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk; \
	fi

# Ten minutes (SOAK_SECONDS) of mixed load on gunicorn while a stand-in for
# Instagram fails at random; checks for 5xx, memory growth and the token file.
# OWNFEED_RELIABILITY_SECONDS=60 makes `make test`'s multi-process test a minute.
soak: install-dev
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
