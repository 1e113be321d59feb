#!/usr/bin/env bash
# Installs the project and runs the whole test suite. Uses the Redis at 127.0.0.1:6379
# (database 9) when one runs, else starts an embedded one; PRUNING_TEST_REDIS_URL overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec .venv/bin/python -m pytest "$@"
