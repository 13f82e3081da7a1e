#!/usr/bin/env bash
# Create/refresh the project virtualenv (.venv) and install ComfyUI-WaDi into it.
#
#   scripts/setup.sh            runtime + trainer tab
#   scripts/setup.sh --dev      also the test tools (pytest, ruff, playwright)
#
# torch goes in first and on purpose: an unpinned torch pulled in by another
# package would download a multi-GB CUDA build.  Without an NVIDIA GPU we install
# the CPU build (torch==2.13.0; from the local wheel cache where one exists, else
# from PyTorch's CPU index).  With a GPU, pip's default CUDA build is what you want.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
EXTRAS="tab"
[[ "${1:-}" == "--dev" ]] && EXTRAS="tab,dev"
STAMP="$VENV/.wadi-installed-$EXTRAS"

if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt requirements.txt ]]; then
  exit 0  # up to date
fi

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip -q --disable-pip-version-check)

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing torch with CUDA"
    "${PIP[@]}" install torch
  else
    echo "[setup] no NVIDIA GPU: installing the CPU build of torch 2.13.0"
    "${PIP[@]}" install torch==2.13.0 2>/dev/null ||
      "${PIP[@]}" install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  fi
fi

echo "[setup] installing ComfyUI-WaDi ($EXTRAS) into $VENV"
# Editable: the checkout stays the single source (it is also the ComfyUI pack folder).
"${PIP[@]}" install -e ".[$EXTRAS]"
touch "$STAMP"
