#!/bin/sh
# Create .venv and install redline with its test extras.
#
# torch is chosen before the project is installed, because a bare `torch`
# requirement pulls a multi-GB CUDA build:
#   - a CUDA torch already importable by $PYTHON is kept (the venv sees it);
#   - otherwise, with no NVIDIA driver present, the CPU wheel torch==2.13.0;
#   - otherwise (a GPU but no torch yet), pip's default torch build.
set -eu
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
        echo "setup: keeping the CUDA torch of $PYTHON (venv with system site-packages)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi

PIP="$VENV/bin/python -m pip"
FIND_LINKS=""
if [ -n "${REDLINE_TORCH_WHEELS:-}" ]; then FIND_LINKS="--find-links $REDLINE_TORCH_WHEELS"; fi

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA driver found, installing pip's default (CUDA) torch"
        $PIP install $FIND_LINKS torch
    else
        echo "setup: no CUDA here, installing the CPU wheel torch==2.13.0"
        $PIP install $FIND_LINKS "torch==2.13.0"
    fi
fi

$PIP install $FIND_LINKS -e '.[test]'
