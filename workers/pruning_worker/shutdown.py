"""A worker asked to shut down (SIGTERM or Ctrl-C: `pruning up` stopping, a pod evicted, a
node drained) lets the job it runs go on for ``PRUNING_WORKER_DRAIN_S``, then stops it at its
next step instead of waiting for it to finish: the attempt ends, the job goes back to the
queue at once and resumes from its last epoch checkpoint on the next worker. Waiting would
take as long as the job has left (hours on big models), past any grace period, and a worker
killed at the end of one leaves its job RUNNING until the reaper finds it silent.

The time is set from Celery's ``worker_shutting_down`` signal, sent in the process that got
the signal: with the solo pool (one worker process per GPU, as deployed) that is the process
running the job. A prefork pool's children are not told and finish their jobs as before.
"""

from __future__ import annotations

import time

_stop_at: float | None = None  # time.monotonic() after which a running job stops


def stopping(drain_s: float) -> None:
    """The worker shuts down: every job of this process stops at its first step ``drain_s``
    seconds from now (a second signal keeps the first one's time)."""
    global _stop_at
    if _stop_at is None:
        _stop_at = time.monotonic() + drain_s


def requested() -> bool:
    """True once the worker was asked to shut down (its running job may still drain)."""
    return _stop_at is not None


def due() -> bool:
    """True once the running job should stop because its worker shuts down."""
    return _stop_at is not None and time.monotonic() >= _stop_at
