#!/usr/bin/env bash
# Install pipekit in .venv and run its demo: a simulated microlensing event
# served by a local archive, downloaded, sorted, configured, reduced, plotted.
#   bash scripts/demo.sh [DIR]      (default DIR: ./pipekit-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
export MPLBACKEND=Agg
.venv/bin/pipekit demo "${1:-pipekit-demo}"
