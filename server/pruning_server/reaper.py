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
import json
import logging
import time

import redis
from google.rpc import code_pb2

from pruning.v1 import pruning_pb2 as pb
from pruning_core import tasks
from pruning_core.objectstore import (
    DEPLOYMENT_MARKER,
    LocalStore,
    deployment_marker,
    marked_by_another,
    one_line,
    open_store,
    unavailable_errors,
)
from pruning_core.settings import Settings
from pruning_core.store import (
    STORE_ERRORS,
    TERMINAL,
    ArtifactInUse,
    AsyncJobStore,
    JobNotFound,
    last_event_age_s,
    make_event,
    state_event,
)
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
    attempt is fenced out), its task is sent, and only then it leaves the running set (a
    server stopped in between leaves it there, and the next pass sends it again). It is sent
    once however long it waits for a free worker. A job being cancelled ends CANCELLED, and a
    job whose worker was lost ``max_attempts`` times ends FAILED (ABORTED), so a job that kills
    every worker it runs on is not sent round the fleet forever."""
    requeued = []
    silent_ids, claimed_at = await store.claim_silent(silent_s)
    for job_id in silent_ids:
        tenant = await store.tenant_of(job_id)
        job = await store.get(tenant, job_id) if tenant is not None else None
        if tenant is not None and job is not None and job.state == pb.JOB_STATE_QUEUED:
            # Re-queued by a pass that may have stopped before sending it: send it (again; a
            # second copy is dropped by the claim that finds the first one's attempt alive).
            await asyncio.to_thread(celery.send_task, tasks.PRUNE, args=[job_id], queue=queue)
            await store.forget_running(job_id, claimed_at)  # unless a worker claimed it meanwhile
            continue
        if tenant is None or job is None or job.state not in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING):
            await store.forget_running(job_id)
            continue
        lost = await store.lost_so_far(job_id) + 1
        silent = f"no heartbeat from attempt {job.attempt} for {silent_s:.0f} s: its worker is presumed lost"
        decision = _after_loss(silent, job.attempt, silent_s, lost, max_attempts)
        after = await store.update(tenant, job_id, decision)
        if not decision.applied:
            continue  # claimed again or written since the silence was seen: its entry is a live attempt's
        await store.count_lost(job_id)
        if after.state == pb.JOB_STATE_QUEUED:
            log.warning("job %s: %s; re-queued", job_id, silent)
            await asyncio.to_thread(celery.send_task, tasks.PRUNE, args=[job_id], queue=queue)
            requeued.append(job_id)
        else:
            log.warning("job %s: %s; %s", job_id, silent, pb.JobState.Name(after.state))
            await store.take_back_exports(job_id, tenant)  # the lost attempt may have stored some
            if settings is not None:
                await asyncio.to_thread(_ended_by_reaper, settings, after)
        await store.forget_running(job_id, claimed_at)  # unless a worker claimed it meanwhile
    return requeued


class _after_loss:
    """What becomes of a job whose attempt was lost, decided on the record as it is when
    written (``applied`` tells whether anything was)."""

    def __init__(self, silent: str, attempt: int, silent_s: float, lost: int, max_attempts: int):
        self.silent, self.attempt, self.silent_s = silent, attempt, silent_s
        self.lost, self.max_attempts = lost, max_attempts
        self.applied = False

    def __call__(self, job: pb.Job) -> list[pb.JobEvent]:
        self.applied = False
        if job.state not in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING) or job.attempt != self.attempt:
            return []  # ended meanwhile, or a new attempt claimed it
        if last_event_age_s(job) < self.silent_s / 2:
            return []  # it wrote since: alive after all
        self.applied = True
        capped = bool(self.max_attempts) and self.lost >= self.max_attempts
        again = job.state == pb.JOB_STATE_RUNNING and not capped
        note = make_event(
            job.id, log=pb.LogLine(level="WARNING", message=f"{self.silent}; {'' if again else 'not '}re-queued")
        )
        if again:
            return [note, state_event(job, pb.JOB_STATE_QUEUED)]
        if job.state == pb.JOB_STATE_CANCELLING:
            return [
                note,
                state_event(job, pb.JOB_STATE_CANCELLED, pb.JobError(code=code_pb2.CANCELLED, message="cancelled")),
            ]
        error = pb.JobError(
            code=code_pb2.ABORTED,
            message=f"the job's worker was lost {self.lost} times (at most {self.max_attempts}, "
            "PRUNING_MAX_ATTEMPTS): the job may be too large for a worker, or crash it",
        )
        return [note, state_event(job, pb.JOB_STATE_FAILED, error)]


def _ended_by_reaper(settings: Settings, job: pb.Job) -> None:
    """A job the reaper ended: counted in the metrics, its checkpoints deleted."""
    _record(settings, job)
    try:
        open_store(settings).drop_checkpoints(job.id)
    except Exception:
        log.warning("job %s: could not delete its checkpoints", job.id, exc_info=True)


def _record(settings: Settings, job: pb.Job) -> None:
    """Counts a job the reaper ended in the job metrics (workers count the others)."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    try:
        JobMetrics(client, settings.key_prefix).record_job(job)
    except Exception:
        log.warning("job %s: could not record its metrics", job.id, exc_info=True)
    finally:
        client.close()


class Reaper:
    """Re-queues silent jobs, pass after pass. After the job store did not answer a pass, no
    job is presumed lost until the store has answered again for ``reap_after_s``: the workers
    were as cut off as this server, their heartbeats resume, and an attempt the outage stopped
    puts its job back in the queue itself. Only a worker still silent after that is lost."""

    def __init__(self, store: AsyncJobStore, celery, settings: Settings):
        self.store, self.celery, self.settings = store, celery, settings
        self.grace_until = 0.0

    async def step(self) -> list[str]:
        if time.monotonic() < self.grace_until:
            return []
        silent_s = self.settings.reap_after_s
        try:
            await send_unsent_jobs(self.store, self.celery, self.settings.queue)
            if silent_s <= 0:  # PRUNING_REAP_AFTER_S=0: lost workers' jobs are never re-queued
                return []
            return await requeue_silent_jobs(
                self.store, self.celery, self.settings.queue, silent_s, self.settings.max_attempts, self.settings
            )
        except STORE_ERRORS as exc:
            self.grace_until = time.monotonic() + silent_s
            log.warning("the job store did not answer (%s): no job is presumed lost for %.0f s", exc, silent_s)
            return []


UNSENT_AFTER_S = 60.0  # past the send lease (30 s) of the CreateJob that recorded the job


async def send_unsent_jobs(store: AsyncJobStore, celery, queue: str, after_s: float = UNSENT_AFTER_S) -> list[str]:
    """Sends the task of every job recorded ``after_s`` ago or more and never sent: its
    CreateJob died between the record and the send (a killed server), or its send failed
    after a concurrent retry had answered. Without this such a job stayed QUEUED forever."""
    sent = []
    for job_id in await store.unsent_before(time.time() - after_s):
        # A server on another queue (sharing the key prefix) leaves the job to its own servers.
        if await store.queue_of(job_id) not in ("", queue) or not await store.still_unsent(job_id):
            continue
        if not await store.claim_send(job_id):
            continue
        try:
            if await store.still_unsent(job_id):  # not cancelled or sent while claiming
                await asyncio.to_thread(celery.send_task, tasks.PRUNE, args=[job_id], queue=queue)
                await store.mark_enqueued(job_id)
                log.warning("job %s was recorded but its task never sent; sent now", job_id)
                sent.append(job_id)
        except STORE_ERRORS:
            await store.release_send(job_id)
            raise  # the pass stops; the next one tries again
        except Exception:  # the broker: this job waits for the next pass, not the others
            await store.release_send(job_id)
            log.warning("job %s: its task could not be sent; trying again at the next pass", job_id, exc_info=True)
    return sent


async def run(store: AsyncJobStore, celery, settings: Settings) -> None:
    """Checks forever, a few times per ``reap_after_s``."""
    reaper = Reaper(store, celery, settings)
    while True:
        await asyncio.sleep(min(30.0, max(0.5, settings.reap_after_s / 4)) if settings.reap_after_s > 0 else 30.0)
        try:
            await reaper.step()
        except Exception:
            log.exception("re-queueing silent jobs failed")


def sweep(blobs: LocalStore, settings: Settings) -> int:
    """Removes upload temp files no live writer holds (a server was killed mid-upload)."""
    removed = blobs.sweep(settings.sweep_min_age_s)
    if removed:
        log.info("removed %d upload temp files left by killed servers", removed)
    return removed


async def owns_store(store: AsyncJobStore, blobs: LocalStore, settings: Settings) -> bool:
    """Whether this deployment's housekeeping may delete what no record of its job store names
    in the artifact store: the store's marker names this job store (its id, or the same Redis
    and key prefix: a Redis that lost its data and its id), or names none yet (it is written).
    A store another deployment marked (a staging server pointed at production's bucket) is
    left alone: each would delete the other's new uploads as unknown."""
    ours = deployment_marker(await store.deployment_id(), settings)
    raw = await asyncio.to_thread(blobs.read_marker)
    theirs: dict | None = None
    if raw is not None:
        try:
            theirs = json.loads(raw)
        except ValueError:
            theirs = None
        if not isinstance(theirs, dict):  # emptied or edited: whose it was is not known
            log.error(
                "the artifact store's %s is unreadable: this deployment deletes none of its blobs or checkpoints "
                "until it is removed (by the operator of the deployment that owns the store)",
                DEPLOYMENT_MARKER,
            )
            return False
    if theirs is not None and marked_by_another(theirs, ours):
        log.error(
            "the artifact store is also used by another deployment (job store %s, key prefix %s): this one "
            "deletes none of its blobs or checkpoints while both use it; give each deployment its own bucket "
            "prefix or artifact directory (or remove its %s if that deployment is gone)",
            theirs.get("redis"),
            theirs.get("key_prefix"),
            DEPLOYMENT_MARKER,
        )
        return False
    if theirs != ours:
        await asyncio.to_thread(blobs.write_marker, json.dumps(ours, sort_keys=True).encode())
    return True


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
        cutoff = now - settings.artifact_retention_s
        kept = 0  # records a job still reads: they stay listed, first (the oldest), until it ends
        while pairs := await store.expired_artifacts(cutoff, start=kept):
            for tenant, artifact_id in pairs:
                # one written again since it was listed (the same bytes uploaded again) stays,
                # and leaves the list (its time is past the cutoff)
                try:
                    removed, last = await store.expire_artifact(tenant, artifact_id, cutoff)
                except ArtifactInUse:
                    kept += 1
                    continue
                counts["records"] += removed
                if last:
                    await store.release(artifact_id)  # a pass stopped before the bytes went leaves them to the next
                    released.add(artifact_id)
    if not await owns_store(store, blobs, settings):
        return counts  # another deployment's blobs and checkpoints are not this job store's to judge
    # Multipart uploads nobody aborted (one dropped while the store did not answer its abort,
    # a killed server's): their parts hold space, though nothing can read them. Best effort: a
    # store that will not list them (no s3:ListBucketMultipartUploads, not implemented) must
    # not stop the rest of the pass.
    try:
        counts["uploads"] = await asyncio.to_thread(blobs.abort_stale_uploads, settings.s3_abort_uploads_after_s)
    except unavailable_errors() as exc:
        counts["uploads"] = 0
        log.warning(
            "housekeeping: stale multipart uploads not aborted (%s); the rest of the pass goes on",
            one_line(exc),
        )
    # Bytes set aside (changed behind the service's back), kept for an operator to look at
    # Best effort as well: a store that refuses these deletes (Object Lock, a policy keeping
    # quarantine/ for forensics, a read-only directory) must not stop the rest of the pass.
    counts["set_aside"] = 0
    refused: tuple[type[BaseException], ...] = (OSError, *unavailable_errors())
    if settings.set_aside_retention_s > 0:
        try:
            counts["set_aside"] = await asyncio.to_thread(blobs.expire_set_aside, now - settings.set_aside_retention_s)
        except refused as exc:
            log.warning("housekeeping: bytes set aside not expired (%s); the rest of the pass goes on", one_line(exc))
    # Any other blob with no record goes only if it was written after the job store was born:
    # a Redis that lost its data (wiped, or replaced empty) knows none of the older blobs'
    # records, and must not take every model with it.
    deleted = await store.released_ids()  # whose last record a DeleteArtifact removed
    released |= deleted
    ids = await asyncio.to_thread(lambda: list(blobs.ids()))
    for start in range(0, len(ids), _BATCH):
        born = await store.born()  # each batch: a store lost during a long sweep is born again
        for artifact_id in await store.unowned(ids[start : start + _BATCH]):
            if not await store.unowned([artifact_id]):
                continue  # owned again since the batch was judged (an upload of the same bytes)
            not_before = 0.0 if artifact_id in released else born
            counts["blobs"] += await asyncio.to_thread(blobs.remove, artifact_id, settings.sweep_min_age_s, not_before)
    # Forget the deleted ones that are gone, or owned again (an upload of the same bytes).
    owned_again = deleted - set(await store.unowned(sorted(deleted)))
    gone = {a for a in deleted if not await asyncio.to_thread(blobs.exists, a)}
    await store.forget_released(owned_again | gone)
    # Checkpoints of a job that ended, or that the job store no longer knows (it lost its
    # data): whoever ended the job was gone before deleting them, and nobody else would.
    counts["checkpoints"] = 0
    for job_id in await asyncio.to_thread(blobs.checkpoint_jobs, settings.sweep_min_age_s):
        owner = await store.tenant_of(job_id)
        try:
            ended = owner is None or (await store.get(owner, job_id)).state in TERMINAL
        except JobNotFound:  # deleted meanwhile (another replica's retention)
            ended = True
        if ended:
            await asyncio.to_thread(blobs.drop_checkpoints, job_id)
            counts["checkpoints"] += 1
    if any(counts.values()):
        log.info(
            "retention: deleted %(jobs)d jobs, %(sweeps)d sweeps, %(records)d artifact records, %(blobs)d blobs, "
            "the checkpoints of %(checkpoints)d ended or unknown jobs, %(set_aside)d blobs set aside; aborted "
            "%(uploads)d stale multipart uploads",
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
        except STORE_ERRORS as exc:
            log.warning(
                "housekeeping: the job store did not answer (%s); next pass in %g s",
                exc,
                settings.housekeeping_interval_s,
            )
        except unavailable_errors() as exc:  # one line a pass while it is down, not a traceback
            log.warning(
                "housekeeping: the artifact store did not answer (%s); next pass in %g s",
                one_line(exc),
                settings.housekeeping_interval_s,
            )
        except Exception:
            log.exception("housekeeping failed")
