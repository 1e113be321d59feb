"""Celery tasks: thin wrappers that take a job id and hand it to the runner."""

from __future__ import annotations

import redis

from pruning_core import tasks

from .app import app, settings


@app.task(
    name=tasks.PRUNE,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(redis.ConnectionError, redis.TimeoutError),
    retry_backoff=True,
    max_retries=5,
)
def prune(self, job_id: str) -> None:
    """Runs job ``job_id``; idempotent (a finished job returns at once)."""
    from .runner import run_job

    run_job(job_id, settings, worker=self.request.hostname or "worker")
