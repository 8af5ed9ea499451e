# ownfeed: `make run` starts the service on the sandbox, `make test` runs every test.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium
HOST ?= 127.0.0.1
PORT ?= 5000
# apt-get needs root; a developer who is not root gets sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint format install install-dev chromium clean

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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
