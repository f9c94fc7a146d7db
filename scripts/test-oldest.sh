#!/usr/bin/env bash
# The unit tests against the oldest dependency versions setup.cfg allows
# (ci/oldest-deps.txt), in their own environment .venv-oldest: proves the floors.
# Fast: the slow, real-service and notebook tests run in scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv-oldest/bin/python ] || "$PYTHON" -m venv .venv-oldest
.venv-oldest/bin/python -m pip install -q --upgrade pip
.venv-oldest/bin/python -m pip install -q -c ci/oldest-deps.txt -e ".[test]"
.venv-oldest/bin/python - <<'PY'
# Fail loudly if pip resolved anything but the pinned floors.
import re
from importlib.metadata import version
for line in open("ci/oldest-deps.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, pinned = re.split(r"==", line)
        assert version(name) == pinned, f"{name} {version(name)} installed, floor is {pinned}"
print("oldest allowed versions installed:", open("ci/oldest-deps.txt").read().count("=="), "pins")
PY
export MPLBACKEND=Agg
.venv-oldest/bin/python -m pytest -m "not slow and not tom" -q -p no:cacheprovider \
    --ignore=tests/reliability --ignore=tests/test_notebooks.py --ignore=tests/test_docs.py "$@"
