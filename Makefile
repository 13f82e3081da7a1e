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

# Default suite: everything except tests marked `slow`, then ONE slow end-to-end test: the real
# `wadi demo` on the shipped tiny-world teacher (about 5 minutes on 2 cores), so CI proves the main job.
test: setup-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m slow tests/test_distill_demo.py

test-all: setup-dev
	$(PY) -m pytest -q

lint: setup-dev
	$(VENV)/bin/ruff check .
