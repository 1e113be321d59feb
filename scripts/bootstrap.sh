#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the project with its development tools, at the
# versions pinned in requirements.lock (scripts/lock.sh re-resolves it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements.lock -r requirements-dev.txt
