#!/usr/bin/env bash
# Installs the project and runs the reference job end to end: trains the TFMOT MNIST CNN,
# starts the embedded service (Redis, gRPC server, Celery worker), prunes the model through
# the SDK and prints the result table. Extra arguments go to examples/mnist_prune.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# what the steps before the job say goes to stderr: with --json, stdout is the result alone
scripts/bootstrap.sh >&2
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/python scripts/fetch_mnist.py >&2   # offline MNIST, used when the Keras download is unreachable
exec .venv/bin/python examples/mnist_prune.py "$@"
