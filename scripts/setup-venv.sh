#!/bin/sh
# Create a venv and install redline with the engine and the test tools: `.[engine,test]`.
#
# torch is chosen before the project is installed, because a bare `torch`
# requirement pulls a multi-GB CUDA build:
#   - a CUDA torch already importable by $PYTHON is kept (the venv sees it);
#   - otherwise, with no NVIDIA driver present, the CPU wheel torch==2.13.0;
#   - otherwise (a GPU but no torch yet), pip's default torch build.
#
# REDLINE_FLOORS=1 (`make test-min`, VENV=.venv-min) installs every runtime dependency at its floor
# instead (scripts/floor_constraints.py), in a venv that never sees the system's packages. torch is the
# exception where no CUDA is present: PyPI's Linux torch wheels are CUDA builds of several GB, so the
# lowest CPU build installable here, torch==2.13.0, stands in for the floor (torch>=2.4); with an NVIDIA
# driver the floor itself is installed.
set -eu
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
FLOORS=${REDLINE_FLOORS:-}
CPU_TORCH="torch==2.13.0"

has_nvidia() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if [ ! -x "$VENV/bin/python" ]; then
    if [ -z "$FLOORS" ] && "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
        echo "setup: keeping the CUDA torch of $PYTHON (venv with system site-packages)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi

PIP="$VENV/bin/python -m pip"
FIND_LINKS=""
if [ -n "${REDLINE_TORCH_WHEELS:-}" ]; then FIND_LINKS="--find-links $REDLINE_TORCH_WHEELS"; fi

CONSTRAINTS=""
if [ -n "$FLOORS" ]; then
    "$PYTHON" scripts/floor_constraints.py > "$VENV/floors.txt"
    CONSTRAINTS="-c $VENV/floors.txt"
    echo "setup: runtime dependencies at their floors:" $(cat "$VENV/floors.txt")
fi

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    if has_nvidia; then
        if [ -n "$FLOORS" ]; then
            TORCH_FLOOR=$(sed -n 's/^ *"torch>=\([0-9.]*\)".*/\1/p' pyproject.toml)
            echo "setup: NVIDIA driver found, installing the torch floor torch==$TORCH_FLOOR"
            $PIP install $FIND_LINKS "torch==$TORCH_FLOOR"
        else
            echo "setup: NVIDIA driver found, installing pip's default (CUDA) torch"
            $PIP install $FIND_LINKS torch
        fi
    else
        echo "setup: no CUDA here, installing the CPU wheel $CPU_TORCH"
        $PIP install $FIND_LINKS "$CPU_TORCH"
    fi
fi

$PIP install $FIND_LINKS $CONSTRAINTS -e '.[engine,test]'
