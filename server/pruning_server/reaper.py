"""Re-queues running jobs whose worker stopped sending heartbeats, and keeps house: sweeps
upload temp files left by killed servers and enforces the retention settings.

A worker killed outright never acknowledges its Celery message, and the broker would only
redeliver it after the visibility timeout (hours, so long GPU jobs are not duplicated). The
heartbeats tell a dead worker from a slow one sooner: a job silent for ``reap_after_s`` is
sent again; the next worker claims it as a new attempt, and the attempt number fences out the
old one should it still be alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis
from google.rpc import code_pb2

from pruning.v1 import pruning_pb2 as pb
from pruning_core import tasks
from pruning_core.objectstore import LocalStore
from pruning_core.settings import Settings
from pruning_core.store import TERMINAL, AsyncJobStore, make_event, state_event
from pruning_core.sweeps import SweepStore
from pruning_core.telemetry import JobMetrics

log = logging.getLogger(__name__)
_BATCH = 500


async def requeue_silent_jobs(
    store: AsyncJobStore,
    celery,
    queue: str,
    silent_s: float,
    max_attempts: int = 0,
    settings: Settings | None = None,
) -> list[str]:
    """Re-queues the jobs whose worker went silent: the job goes back to QUEUED (its old
    attempt is fenced out) and leaves the running set until a worker claims it, so it is sent
    once however long it waits for a free worker. A job being cancelled ends CANCELLED, and a
    job silent in its ``max_attempts``-th attempt ends FAILED (ABORTED), so a job that kills
    every worker it runs on is not sent round the fleet forever."""
    requeued = []
    for job_id in await store.claim_silent(silent_s):
        tenant = await store.tenant_of(job_id)
        job = await store.get(tenant, job_id) if tenant is not None else None
        if tenant is None or job is None or job.state not in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING):
            await store.forget_running(job_id)
            continue
        silent = f"no heartbeat from attempt {job.attempt} for {silent_s:.0f} s: its worker is presumed lost"
        again = job.state == pb.JOB_STATE_RUNNING and not (max_attempts and job.attempt >= max_attempts)
        after = await store.update(tenant, job_id, _after_loss(silent, job.attempt, max_attempts, again))
        await store.forget_running(job_id)
        if after.state == pb.JOB_STATE_QUEUED and after.attempt == job.attempt:
            log.warning("job %s: %s; re-queued", job_id, silent)
            await asyncio.to_thread(celery.send_task, tasks.PRUNE, args=[job_id], queue=queue)
            requeued.append(job_id)
        elif after.state in TERMINAL and after.attempt == job.attempt:
            log.warning("job %s: %s; %s", job_id, silent, pb.JobState.Name(after.state))
            if settings is not None:
                await asyncio.to_thread(_record, settings, after)
    return requeued


def _after_loss(silent: str, attempt: int, max_attempts: int, again: bool) -> Callable[[pb.Job], list[pb.JobEvent]]:
    def mutate(job: pb.Job) -> list[pb.JobEvent]:
        if job.state not in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING) or job.attempt != attempt:
            return []  # ended meanwhile, or a new attempt claimed it
        if again:
            note = make_event(job.id, log=pb.LogLine(level="WARNING", message=f"{silent}; re-queued"))
            return [note, state_event(job, pb.JOB_STATE_QUEUED)]
        note = make_event(job.id, log=pb.LogLine(level="WARNING", message=f"{silent}; not re-queued"))
        if job.state == pb.JOB_STATE_CANCELLING:
            return [
                note,
                state_event(job, pb.JOB_STATE_CANCELLED, pb.JobError(code=code_pb2.CANCELLED, message="cancelled")),
            ]
        error = pb.JobError(
            code=code_pb2.ABORTED,
            message=f"the job's worker was lost in each of its {attempt} attempts "
            f"(at most {max_attempts}, PRUNING_MAX_ATTEMPTS): the job may be too large for a worker, "
            "or crash it",
        )
        return [note, state_event(job, pb.JOB_STATE_FAILED, error)]

    return mutate


def _record(settings: Settings, job: pb.Job) -> None:
    """Counts a job the reaper ended in the job metrics (workers count the others)."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        JobMetrics(client, settings.key_prefix).record_job(job)
    except Exception:
        log.warning("job %s: could not record its metrics", job.id, exc_info=True)
    finally:
        client.close()


async def run(store: AsyncJobStore, celery, settings: Settings) -> None:
    """Checks forever, a few times per ``reap_after_s``."""
    silent_s = settings.reap_after_s
    while True:
        await asyncio.sleep(min(30.0, max(0.5, silent_s / 4)))
        try:
            await requeue_silent_jobs(store, celery, settings.queue, silent_s, settings.max_attempts, settings)
        except Exception:
            log.exception("re-queueing silent jobs failed")


def sweep(blobs: LocalStore, settings: Settings) -> int:
    """Removes upload temp files no live writer holds (a server was killed mid-upload)."""
    removed = blobs.sweep(settings.sweep_min_age_s)
    if removed:
        log.info("removed %d upload temp files left by killed servers", removed)
    return removed


async def enforce_retention(store: AsyncJobStore, blobs: LocalStore, settings: Settings) -> dict[str, int]:
    """Deletes ended jobs, ended sweeps (by the job retention) and artifact records past their
    retention, then every blob no record points to; returns the counts."""
    now = time.time()
    counts = {"jobs": 0, "sweeps": 0, "records": 0, "blobs": 0}
    if settings.job_retention_s > 0:
        while ids := await store.expired_jobs(now - settings.job_retention_s):
            for job_id in ids:
                await store.delete_job(job_id)
                await asyncio.to_thread(blobs.drop_checkpoints, job_id)
            counts["jobs"] += len(ids)
        sweeps = SweepStore(store.redis, store.keys.prefix)
        while ids := await sweeps.expired(now - settings.job_retention_s):
            for sweep_id in ids:
                await sweeps.delete(sweep_id)
            counts["sweeps"] += len(ids)
    released: set[str] = set()  # blobs whose last record the retention just deleted
    if settings.artifact_retention_s > 0:
        while pairs := await store.expired_artifacts(now - settings.artifact_retention_s):
            for tenant, artifact_id in pairs:
                if await store.delete_artifact(tenant, artifact_id):
                    released.add(artifact_id)
            counts["records"] += len(pairs)
    # Any other blob with no record goes only if it was written after the job store was born:
    # a Redis that lost its data (wiped, or replaced empty) knows none of the older blobs'
    # records, and must not take every model with it.
    born = await store.born()
    ids = await asyncio.to_thread(lambda: list(blobs.ids()))
    for start in range(0, len(ids), _BATCH):
        for artifact_id in await store.unowned(ids[start : start + _BATCH]):
            not_before = 0.0 if artifact_id in released else born
            counts["blobs"] += await asyncio.to_thread(blobs.remove, artifact_id, settings.sweep_min_age_s, not_before)
    if any(counts.values()):
        log.info(
            "retention: deleted %(jobs)d jobs, %(sweeps)d sweeps, %(records)d artifact records, %(blobs)d blobs",
            counts,
        )
    return counts


async def housekeeping(store: AsyncJobStore, blobs: LocalStore, settings: Settings) -> None:
    """Sweeps and enforces retention every ``housekeeping_interval_s``, forever."""
    while True:
        await asyncio.sleep(settings.housekeeping_interval_s)
        try:
            await asyncio.to_thread(sweep, blobs, settings)
            await enforce_retention(store, blobs, settings)
        except Exception:
            log.exception("housekeeping failed")
