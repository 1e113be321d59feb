#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs the project with its development tools, at the
# versions pinned in requirements.lock (scripts/lock.sh re-resolves it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# uv (pinned in requirements.lock) installs the pinned set in about 40 s where pip takes over two
# minutes (measured on a clean clone here: 38 s against 136 s, the same packages and versions);
# pip does it when uv cannot. Compiled to bytecode at install, as pip does: uv leaves that to the
# first import, which never writes it under PYTHONDONTWRITEBYTECODE (set on the CI machines),
# and then every process pays it again (13 s more to import TensorFlow here, 21 s against 8 s).
uv_pin=$(grep -E '^uv==' requirements.lock)
if .venv/bin/python -m pip install --quiet --disable-pip-version-check "$uv_pin" \
  && VIRTUAL_ENV="$PWD/.venv" .venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python \
    -c requirements.lock -r requirements-dev.txt; then
  exit 0
fi
echo "bootstrap: uv could not install the pinned set; pip does" >&2
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c requirements.lock -r requirements-dev.txt
