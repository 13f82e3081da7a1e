# The two commands at the top of the README.
#   make demo   set up .venv and run the WaDi demo on the embedded tiny world
#   make test   set up .venv (with test tools) and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all lint setup setup-dev

setup:
	@scripts/setup.sh

setup-dev:
	@scripts/setup.sh --dev

demo: setup
	$(VENV)/bin/wadi demo

# Default suite: everything except tests marked `slow` (one end-to-end distillation stays in).
test: setup-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

test-all: setup-dev
	$(PY) -m pytest -q

lint: setup-dev
	$(VENV)/bin/ruff check .
