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
