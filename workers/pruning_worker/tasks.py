"""Celery tasks: thin wrappers that take a job id and hand it to the runner."""

from __future__ import annotations

from pruning.v1 import pruning_pb2 as pb
from pruning_core import tasks, telemetry

from . import observability
from .app import app, settings
from .errors import STORE_ERRORS


class JobFailedError(Exception):
    """The job ended FAILED (and is recorded so): the task fails too, so that Flower and the
    task events show FAILURE. Never retried: the job's outcome is final."""


def check_outcome(job: pb.Job | None) -> None:
    """Raises JobFailedError for a FAILED job; a cancelled or skipped job is no task failure."""
    if job is not None and job.state == pb.JOB_STATE_FAILED:
        code = telemetry.code_label(job.error.code)
        raise JobFailedError(f"job {job.id} failed ({code}): {job.error.message}")


@app.task(
    name=tasks.PRUNE,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=STORE_ERRORS,
    retry_backoff=True,
    max_retries=5,
    throws=(JobFailedError,),  # an expected outcome: logged without a traceback
)
def prune(self, job_id: str) -> str | None:
    """Runs job ``job_id``; idempotent (a finished job returns at once). Returns the final
    state's name; raises JobFailedError when the job failed."""
    from .runner import run_job

    final = run_job(job_id, settings, worker=self.request.hostname or "worker", task_id=self.request.id or "")
    observability.job_finished(final)
    check_outcome(final)
    return telemetry.state_label(final.state) if final is not None else None
