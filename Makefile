# The two commands at the top of the README.
#   make demo   set up .venv and run the WaDi demo on the embedded tiny world
#   make test   set up .venv (with test tools) and run the test suite; with COMFYUI_DIR and COMFY_PY set
#               (CI sets them) also every ComfyUI-facing test against that real ComfyUI (make test-comfyui)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-comfyui test-all lint setup setup-dev

setup:
	@scripts/setup.sh

setup-dev:
	@scripts/setup.sh --dev

demo: setup
	$(VENV)/bin/wadi demo

# Default suite: everything except tests marked `slow`, then ONE slow end-to-end test: the real
# `wadi demo` on the shipped tiny-world teacher (about 5 minutes on 2 cores), so CI proves the main job.
# With a real ComfyUI (COMFYUI_DIR + COMFY_PY), the ComfyUI tests leave the first run (where they could only
# skip: this venv cannot import ComfyUI) and run in test-comfyui instead, where a skip is a failure.
WITH_COMFYUI := $(and $(COMFYUI_DIR),$(COMFY_PY))

test: setup-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow$(if $(WITH_COMFYUI), and not comfyui)"
	$(PY) -m pytest -q -m slow tests/test_distill_demo.py
	$(if $(WITH_COMFYUI),$(MAKE) --no-print-directory test-comfyui)

# Every ComfyUI-facing test (live server included) against a real ComfyUI: COMFYUI_DIR/COMFY_PY, or CI's
# ComfyUI snapshot set up once under ~/.cache/wadi-comfyui. Needs no .venv.
test-comfyui:
	scripts/comfyui-tests.sh

test-all: setup-dev
	$(PY) -m pytest -q

lint: setup-dev
	$(VENV)/bin/ruff check .
