#!/usr/bin/env bash
# Lint and type checks (CI runs them before the tests): ruff (lint and format) on everything,
# mypy on the service packages, and mypy --strict on the SDK. Installs nothing: run
# scripts/bootstrap.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy core/pruning_core server/pruning_server workers/pruning_worker
.venv/bin/mypy --strict client/pruning_client
