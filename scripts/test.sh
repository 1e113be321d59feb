#!/usr/bin/env bash
# Installs the project and runs the whole test suite in PRUNING_TEST_PROCESSES processes (2 by
# default; 1 runs it in this one), each test file whole in one of them. Uses the Redis at
# 127.0.0.1:6379 (database 9) when one runs, else starts an embedded one;
# PRUNING_TEST_REDIS_URL overrides. Each process has its own key prefix, queue and workers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
processes=${PRUNING_TEST_PROCESSES:-2}
parallel=()
if [ "$processes" != 1 ]; then
    parallel=(-n "$processes" --dist loadfile)
fi
exec .venv/bin/python -m pytest "${parallel[@]}" "$@"
