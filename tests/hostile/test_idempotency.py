"""Concurrent CreateJob calls with one idempotency key make one job and send one task: the
queue held up to seven copies of it before (each a claim the worker then dropped)."""

from __future__ import annotations

import concurrent.futures

import pytest
import redis
from hostile import hostile_server, tiny  # noqa: F401 - fixture

from pruning_client import Client, job_spec

pytestmark = pytest.mark.integration
CALLS = 40


def test_concurrent_retries_send_one_task(env, tiny):  # noqa: F811
    server = hostile_server(env, "idem-send", key_prefix=f"{env['PRUNING_KEY_PREFIX']}:idem-send")
    broker = redis.Redis.from_url(server.settings.celery_broker_url())
    queue = server.settings.queue
    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            spec = job_spec(client.upload_model(tiny["keras"]).id, dataset=client.upload_dataset(tiny["data"]).id)
            for round_ in range(3):
                with concurrent.futures.ThreadPoolExecutor(CALLS) as pool:
                    ids = set(pool.map(lambda _: client.submit(spec, idempotency_key=f"k{round_}").id, range(CALLS)))  # noqa: B023
                assert len(ids) == 1
                assert broker.llen(queue) == round_ + 1, f"round {round_}: {broker.llen(queue)} tasks queued"
    finally:
        server.stop()
        broker.delete(queue)
        broker.close()


def test_a_job_recorded_but_never_sent_is_sent_by_the_reaper(env):
    """A CreateJob that died between recording the job and sending its task (a killed server;
    a concurrent retry had answered with the job) left it QUEUED forever: the reaper sends it,
    once, and forgets jobs that ended meanwhile."""
    import asyncio

    from conftest import settings_for
    from pruning.v1 import pruning_pb2 as pb
    from pruning_core.store import AsyncJobStore, new_job_id, state_event
    from pruning_server import reaper
    from pruning_server.service import make_celery

    settings = settings_for(
        env, key_prefix=f"{env['PRUNING_KEY_PREFIX']}:unsent", queue=f"{env['PRUNING_QUEUE']}-unsent"
    )
    celery = make_celery(settings)
    broker = redis.Redis.from_url(settings.celery_broker_url())

    async def scenario() -> tuple[list[str], list[str], str, str]:
        store = AsyncJobStore.from_url(settings.redis_url, settings.key_prefix)
        try:
            lost, _ = await store.create("t", pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED), queue=settings.queue)
            # A job of a server on another queue sharing the prefix is left to that queue's servers.
            elsewhere, _ = await store.create("t", pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED), queue="other")
            ended, _ = await store.create("t", pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))
            await store.update("t", ended.id, lambda j: [state_event(j, pb.JOB_STATE_CANCELLED)])
            assert await reaper.send_unsent_jobs(store, celery, settings.queue) == []  # too recent to judge
            first = await reaper.send_unsent_jobs(store, celery, settings.queue, after_s=0)
            again = await reaper.send_unsent_jobs(store, celery, settings.queue, after_s=0)
            assert await store.redis.zrange(store.keys.unsent(), 0, -1) == [elsewhere.id.encode()]
            assert await store.is_enqueued(lost.id) and not await store.is_enqueued(elsewhere.id)
            return first, again, lost.id, ended.id
        finally:
            await store.redis.aclose()

    try:
        first, again, lost, ended = asyncio.run(scenario())
        assert first == [lost] and again == []
        assert broker.llen(settings.queue) == 1
    finally:
        broker.delete(settings.queue)
        broker.close()
