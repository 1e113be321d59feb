"""The one place where TensorFlow's errors become job errors, for every step of a job."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import tensorflow as tf

from .errors import JobInputError

log = logging.getLogger(__name__)

# What a model, its data or its spec can make TensorFlow raise: the job's inputs are at fault.
INPUT_ERRORS = (ValueError, TypeError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)


# an eager op's error ends in "[Op:ResourceGather]", and "name: <its name>" (often empty) after it
_OP_NOISE = re.compile(r"\x1b\[[0-9;]*m|\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\](\s*name:\s*\S*)?")


def root_cause(exc: BaseException) -> str:
    """The line of a TensorFlow error that names the cause (its traces run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z]+(Error|Exception): ", line)]
    if causes:
        return causes[-1][:500]
    kernels = [_OP_NOISE.sub("", line) for line in lines if "{{function_node" in line]  # an op's own message
    if kernels:
        return kernels[-1].strip()[:500]
    converter = [m.group(1) for line in lines if (m := re.search(r"\berror: (.+)", line))]  # MLIR's diagnostics
    if converter:
        return converter[0][:500]
    noise = ("File ", "[[", "Detected at node", "Graph execution error", "Call arguments", "•", "in user code")
    rest = [line for line in lines if not line.startswith(noise)]
    return (rest[-1] if rest else type(exc).__name__)[:500]


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Runs one step of a job; an input error of TensorFlow becomes a JobInputError naming
    ``what`` and the root cause, without TensorFlow's trace."""
    try:
        yield
    except JobInputError:
        raise
    except INPUT_ERRORS as exc:
        log.info("%s failed on the job's inputs", what, exc_info=True)  # the whole trace, for the operator
        raise JobInputError(f"{what} failed on this model, data and spec: {root_cause(exc)}") from exc
