#!/usr/bin/env bash
# Set up everything the tests need, from nothing, and run them:
#   .venv      pipekit with its test, dask and docs extras
#   .venv-tom  a real TOM Toolkit (it pins its own astropy and Django)
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,dask,docs]"

if [ -f tests/tom_server/setup.sh ]; then
    bash tests/tom_server/setup.sh .venv-tom
    export PIPEKIT_TOM_PYTHON="$PWD/.venv-tom/bin/python"
fi

# Plots are written to files; no display is needed or wanted.
export MPLBACKEND=Agg
.venv/bin/python -m pytest "$@"
