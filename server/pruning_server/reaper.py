"""Re-queues running jobs whose worker stopped sending heartbeats.

A worker killed outright never acknowledges its Celery message, and the broker would only
redeliver it after the visibility timeout (hours, so long GPU jobs are not duplicated). The
heartbeats tell a dead worker from a slow one sooner: a job silent for ``reap_after_s`` is
sent again; the next worker claims it as a new attempt, and the attempt number fences out the
old one should it still be alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pruning.v1 import pruning_pb2 as pb
from pruning_core import tasks
from pruning_core.store import AsyncJobStore, make_event

log = logging.getLogger(__name__)


def _log_event(line: pb.LogLine) -> Callable[[pb.Job], list[pb.JobEvent]]:
    return lambda job: [make_event(job.id, log=line)]


async def requeue_silent_jobs(store: AsyncJobStore, celery, queue: str, silent_s: float) -> list[str]:
    requeued = []
    for job_id in await store.claim_silent(silent_s):
        tenant = await store.tenant_of(job_id)
        job = await store.get(tenant, job_id) if tenant is not None else None
        if tenant is None or job is None or job.state not in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING):
            await store.forget_running(job_id)
            continue
        message = (
            f"no heartbeat from attempt {job.attempt} for {silent_s:.0f} s: its worker is presumed lost; re-queued"
        )
        log.warning("job %s: %s", job_id, message)
        await store.update(tenant, job_id, _log_event(pb.LogLine(level="WARNING", message=message)))
        await asyncio.to_thread(celery.send_task, tasks.PRUNE, args=[job_id], queue=queue)
        requeued.append(job_id)
    return requeued


async def run(store: AsyncJobStore, celery, queue: str, silent_s: float) -> None:
    """Checks forever, a few times per ``silent_s``."""
    while True:
        await asyncio.sleep(min(30.0, max(0.5, silent_s / 4)))
        try:
            await requeue_silent_jobs(store, celery, queue, silent_s)
        except Exception:
            log.exception("re-queueing silent jobs failed")
