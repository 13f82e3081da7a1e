#!/usr/bin/env bash
# Run every ComfyUI-facing test against a real ComfyUI; in this run no ComfyUI test may skip.
#
#   scripts/comfyui-tests.sh          (= make test-comfyui; make test calls it when COMFYUI_DIR is set)
#
# Which ComfyUI: COMFYUI_DIR (a ComfyUI checkout) with COMFY_PY (the python that runs it). Unset, and
# with CI's ComfyUI snapshot beside this checkout (../shared/comfyui), that snapshot is set up once
# under ~/.cache/wadi-comfyui (3-5 minutes, ~6 GB) and reused.
#
# The tests must import ComfyUI (torchvision, its pinned packages) AND the test tools (pytest,
# diffusers for the reference path). ComfyUI's venv is never changed: .venv-comfyui is an overlay
# venv that sees ComfyUI's packages through a .pth file and adds only what ComfyUI lacks, with
# every package ComfyUI has held at its version (pip constraints from ComfyUI's `pip freeze`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [[ -z "${COMFYUI_DIR:-}" || -z "${COMFY_PY:-}" ]]; then
  setup="$(dirname "$root")/shared/comfyui/setup.sh"
  if [[ ! -f "$setup" ]]; then
    echo "[comfyui-tests] set COMFYUI_DIR (a ComfyUI checkout) and COMFY_PY (the python that runs it)" >&2
    exit 2
  fi
  echo "[comfyui-tests] setting up ComfyUI in ${WADI_COMFYUI_CACHE:-$HOME/.cache/wadi-comfyui}"
  env_lines=$(bash "$setup" "${WADI_COMFYUI_CACHE:-$HOME/.cache/wadi-comfyui}")
  COMFYUI_DIR=$(sed -n 's/^COMFYUI_DIR=//p' <<<"$env_lines")
  COMFY_PY=$(sed -n 's/^COMFY_PY=//p' <<<"$env_lines")
fi
[[ -f "$COMFYUI_DIR/comfy/sd.py" ]] || { echo "[comfyui-tests] COMFYUI_DIR=$COMFYUI_DIR is not a ComfyUI checkout" >&2; exit 2; }
"$COMFY_PY" -c "import torch, torchvision" || { echo "[comfyui-tests] COMFY_PY=$COMFY_PY cannot import torch and torchvision" >&2; exit 2; }
export COMFYUI_DIR COMFY_PY
export COMFYUI_PYTHON="$COMFY_PY"   # the live server runs under ComfyUI's own interpreter
export WADI_REQUIRE_COMFYUI=1       # tests/conftest.py: a skipped ComfyUI test is a failure here

venv=${COMFY_TEST_VENV:-.venv-comfyui}
stamp="$venv/.wadi-ready"
comfy_site=$("$COMFY_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ ! -f "$stamp" || "$stamp" -ot pyproject.toml || "$(cat "$stamp")" != "$comfy_site" ]]; then
  base=$("$COMFY_PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
  echo "[comfyui-tests] building $venv over $comfy_site"
  "$base" -m venv --clear "$venv"
  own_site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # addsitedir (not a bare path line): ComfyUI's own .pth files are processed too.
  printf 'import site; site.addsitedir(%s)\n' "$("$COMFY_PY" -c 'import sys; print(repr(sys.argv[1]))' "$comfy_site")" \
    > "$own_site/_wadi_comfyui_site.pth"
  # Every package ComfyUI has stays at its version; a local label (2.14.1+cu130) is kept as is.
  "$COMFY_PY" -m pip freeze --all --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' > "$venv/comfyui-constraints.txt"
  "$venv/bin/python" -m pip -q --disable-pip-version-check install -c "$venv/comfyui-constraints.txt" \
    -e ".[trainer]" "pytest>=8" "scipy>=1.10"
  echo "$comfy_site" > "$stamp"
fi

# The ComfyUI-facing files: tests marked `comfyui` (real ComfyUI only, slow live ones included) and the
# pack tests that run against the fake ComfyUI elsewhere, here against the real one.
files=(tests/test_comfy*.py tests/test_keymap_comfyui.py tests/test_distill_comfyui.py tests/test_workflows.py)
"$venv/bin/python" -m pytest -q -m "comfyui or not slow" "${files[@]}" "$@"
