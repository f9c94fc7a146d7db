#!/usr/bin/env bash
# Install a real TOM Toolkit 3.x for pipekit's tests, in its own virtual
# environment (it pins its own astropy and Django), and check the test project.
#   bash tests/tom_server/setup.sh VENV_DIR      (e.g. .venv-tom)
# Then:  export PIPEKIT_TOM_PYTHON="$PWD/VENV_DIR/bin/python"  before pytest.
set -euo pipefail
VENV=${1:?usage: bash tests/tom_server/setup.sh VENV_DIR}
VENV="$(realpath -m "$VENV")"   # the project check below runs from another folder
PYTHON=${PYTHON:-python3}
HERE="$(cd "$(dirname "$0")" && pwd)"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/python" - <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("tomtoolkit").split(".")[0] == "3" else 1)
PY
then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "tomtoolkit>=3,<4"
fi

# The project must load under this TOM Toolkit (no database is touched).
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
if ! (cd "$HERE" && PIPEKIT_TOM_RUN_DIR="$SCRATCH" MPLCONFIGDIR="$SCRATCH/mpl" \
        "$VENV/bin/python" manage.py check --fail-level ERROR) >"$SCRATCH/check.log" 2>&1; then
    cat "$SCRATCH/check.log" >&2
    echo "tests/tom_server: the test TOM project does not load under $VENV" >&2
    exit 1
fi
echo "TOM Toolkit $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("tomtoolkit"))') ready in $VENV"
