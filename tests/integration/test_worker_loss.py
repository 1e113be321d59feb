"""A job whose worker dies is run again as a new attempt and finishes."""

from __future__ import annotations

import signal

import pytest
from google.rpc import code_pb2

from conftest import ServerThread, settings_for, start_worker, stop_worker, training_job, wait_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client
from pruning_server.service import make_celery

pytestmark = pytest.mark.integration


def test_killed_worker_job_is_rerun_and_finishes(env, files, tmp_path):
    lossy = {**env, "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-loss", "PRUNING_HEARTBEAT_INTERVAL_S": "0.5"}
    server = ServerThread(settings_for(lossy, reap_after_s=4))
    first = start_worker(lossy, tmp_path / "first.log")
    second = None
    try:
        with Client(server.target) as client:
            job = training_job(client, files, epochs=1)
            wait_for(lambda: job.status().progress.step > 0, 120, "the job to train")
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = start_worker(lossy, tmp_path / "second.log")
            result = job.result(timeout=300)
            final = job.status()
            events = list(client.watch_events(job.id))
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 2
        assert result.pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
        runs = [
            e.state_change.attempt
            for e in events
            if e.WhichOneof("kind") == "state_change" and e.state_change.to == pb.JOB_STATE_RUNNING
        ]
        assert runs == [1, 2]
        assert any("presumed lost" in e.log.message for e in events if e.WhichOneof("kind") == "log")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_worker(proc)
        server.stop()


def _kill_when_running(job, proc, attempt: int) -> None:
    wait_for(lambda: (s := job.status()).attempt == attempt and s.progress.step > 0, 120, f"attempt {attempt} to train")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_job_that_loses_its_worker_in_every_attempt_fails_after_max_attempts(env, files, tmp_path):
    """A job that kills each worker it runs on is not sent round the fleet forever."""
    import redis

    from pruning_core.telemetry import JobMetrics

    lossy = {**env, "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-poison", "PRUNING_HEARTBEAT_INTERVAL_S": "0.5"}
    server = ServerThread(settings_for(lossy, reap_after_s=3, max_attempts=2))
    workers = []
    metrics = JobMetrics(redis.Redis.from_url(lossy["PRUNING_REDIS_URL"]), lossy["PRUNING_KEY_PREFIX"])
    aborted_before = metrics.failures().get("ABORTED", 0)
    try:
        with Client(server.target) as client:
            job = training_job(client, files, epochs=5)
            for attempt in (1, 2):
                workers.append(start_worker(lossy, tmp_path / f"w{attempt}.log"))
                _kill_when_running(job, workers[-1], attempt)
            wait_for(lambda: job.status().state != pb.JOB_STATE_RUNNING, 60, "the job to be given up", 0.2)
            final = job.status()
            events = list(client.watch_events(job.id))
        assert final.state == pb.JOB_STATE_FAILED and final.attempt == 2
        assert final.error.code == code_pb2.ABORTED and "lost 2 times" in final.error.message
        logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
        states = [e.state_change.to for e in events if e.WhichOneof("kind") == "state_change"]
        assert states == [
            pb.JOB_STATE_QUEUED,
            pb.JOB_STATE_RUNNING,
            pb.JOB_STATE_QUEUED,
            pb.JOB_STATE_RUNNING,
            pb.JOB_STATE_FAILED,
        ]  # back in the queue between its attempts; re-queued once, however long the next worker took
        assert (
            sum(m.endswith("; re-queued") for m in logs) == 1 and sum(m.endswith("; not re-queued") for m in logs) == 1
        )
        # counted once the reaper has written the outcome (just after it): waited for, once
        wait_for(lambda: metrics.failures().get("ABORTED", 0) >= aborted_before + 1, 10, "the failure counted")
        assert metrics.failures().get("ABORTED", 0) == aborted_before + 1
    finally:
        for proc in workers:
            if proc.poll() is None:
                stop_worker(proc)
        server.stop()
        metrics.redis.close()


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_cancelling_job_whose_worker_is_lost_ends_cancelled_without_a_rerun(env, attempt):
    import asyncio
    import uuid

    from pruning_core.store import AsyncJobStore, new_job_id, state_event
    from pruning_server import reaper

    prefix = f"{env['PRUNING_KEY_PREFIX']}-giveup-{uuid.uuid4().hex[:6]}"

    async def scenario() -> tuple[pb.Job, list[str]]:
        store = AsyncJobStore.from_url(env["PRUNING_REDIS_URL"], prefix)
        try:
            job, _ = await store.create("t", pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))

            def running_then_cancelling(j: pb.Job) -> list[pb.JobEvent]:
                j.attempt = attempt
                return [state_event(j, pb.JOB_STATE_RUNNING), state_event(j, pb.JOB_STATE_CANCELLING)]

            await store.update("t", job.id, running_then_cancelling)
            await store.redis.zadd(store.keys.running(), {job.id: 1.0})  # silent since 1970
            await asyncio.sleep(0.6)  # and no event for over half the silence
            requeued = await reaper.requeue_silent_jobs(store, None, "nowhere", 1.0, max_attempts=2)
            return await store.get("t", job.id), requeued
        finally:
            keys = [k async for k in store.redis.scan_iter(f"{prefix}:*")]
            if keys:
                await store.redis.delete(*keys)
            await store.redis.aclose()

    final, requeued = asyncio.run(scenario())
    assert requeued == [] and final.state == pb.JOB_STATE_CANCELLED and final.attempt == attempt


def test_after_an_outage_of_the_job_store_no_job_is_presumed_lost_at_once(env):
    """A pass the store did not answer starts a grace of reap_after_s: a job silent through the
    outage is not re-queued (nor counted lost) at once when the store answers again."""
    import asyncio
    import uuid

    from redis_servers import free_ports

    from pruning_core.store import AsyncJobStore, new_job_id, state_event
    from pruning_server import reaper

    prefix = f"{env['PRUNING_KEY_PREFIX']}-grace-{uuid.uuid4().hex[:6]}"
    settings = settings_for(env, key_prefix=prefix, queue=prefix, reap_after_s=1.5, max_attempts=0)  # no worker

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        store = AsyncJobStore.from_url(env["PRUNING_REDIS_URL"], prefix)
        (port,) = free_ports(1)
        away = AsyncJobStore.from_url(f"redis://127.0.0.1:{port}/0", prefix)  # nothing listens: refused
        celery = make_celery(settings)
        try:
            job, _ = await store.create("t", pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))

            def running(j: pb.Job) -> list[pb.JobEvent]:
                j.attempt = 1
                return [state_event(j, pb.JOB_STATE_RUNNING)]

            await store.update("t", job.id, running)
            await store.redis.zadd(store.keys.running(), {job.id: 1.0})
            await asyncio.sleep(1.0)  # no event for over half the silence
            watcher = reaper.Reaper(away, celery, settings)
            during = await watcher.step()  # the store does not answer
            watcher.store = store  # it answers again
            after = await watcher.step()
            await asyncio.sleep(1.6)  # the grace ends
            later = await watcher.step()
            return during, after, later
        finally:
            celery.close()
            keys = [k async for k in store.redis.scan_iter(f"{prefix}*")]
            keys += [k async for k in store.redis.scan_iter(f"_kombu.binding*{prefix}*")]
            if keys:
                await store.redis.delete(*keys)
            await store.redis.aclose()
            await away.redis.aclose()

    during, after, later = asyncio.run(scenario())
    assert during == [] and after == [] and len(later) == 1
