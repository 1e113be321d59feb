"""The per-tenant state and label indexes of jobs on a real Redis: ListJobs through them
answers what a walk of every job with the predicate answers, page by page; a state change
moves the id between indexes; retention leaves no entry behind; jobs recorded before the
indexes are backfilled once, at server start."""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc
import pytest
import redis

from conftest import ServerThread, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_core.store import STATES, AsyncJobStore, JobStore, new_job_id, state_event
from pruning_server import convert

pytestmark = pytest.mark.integration

Q, R, C, S, F, X = (
    pb.JOB_STATE_QUEUED,
    pb.JOB_STATE_RUNNING,
    pb.JOB_STATE_CANCELLING,
    pb.JOB_STATE_SUCCEEDED,
    pb.JOB_STATE_FAILED,
    pb.JOB_STATE_CANCELLED,
)
# The states a job passes through on its way to each final state.
PATHS = {Q: [], R: [R], C: [R, C], S: [R, S], F: [R, F], X: [X]}
FILTERS = [
    ([R], {}),
    ([Q, R], {}),
    ([S, F, X], {}),
    ([C], {}),
    ([], {"team": "x"}),
    ([], {"team": "y", "tier": "gold"}),
    ([], {"tier": ""}),
    ([R, S], {"team": "z"}),
    ([Q], {"team": "nobody"}),
    ([pb.JOB_STATE_UNSPECIFIED], {}),
]


@pytest.fixture()
def prefix(redis_url):
    name = f"pruning-unit-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)


def _move(to):
    return lambda job: [state_event(job, to)]


async def _populate(store: AsyncJobStore, tenant: str, n: int, seed: int) -> dict[str, pb.Job]:
    rng = random.Random(seed)
    jobs = {}
    for _ in range(n):
        labels = {}
        if rng.random() < 0.8:
            labels["team"] = rng.choice("xyz")
        if rng.random() < 0.4:
            labels["tier"] = rng.choice(["gold", ""])
        job, _ = await store.create(tenant, pb.Job(id=new_job_id(), spec=pb.JobSpec(model_id="m"), labels=labels))
        for to in PATHS[rng.choice(list(PATHS))]:
            job = await store.update(tenant, job.id, _move(to))
        jobs[job.id] = job
    return jobs


async def _pages(store, tenant, page_size, accept, **hints) -> list[str]:
    ids, token = [], ""
    while True:
        page, token = await store.list(tenant, page_size, token, accept, **hints)
        assert len(page) <= page_size
        if token:
            assert len(page) == page_size and token == page[-1].id
        ids += [j.id for j in page]
        if not token:
            return ids


def _matches(states, labels):
    return lambda job: convert.job_matches(job, set(states), labels)


def test_filtered_lists_answer_what_a_walk_of_every_job_answers(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            made = {t: await _populate(store, t, 160, seed) for seed, t in enumerate(("a", "b"))}
            for tenant, jobs in made.items():
                for states, labels in FILTERS:
                    accept = _matches(states, labels)
                    expected = sorted((i for i, j in jobs.items() if accept(j)), reverse=True)
                    walked = await _pages(store, tenant, 500, accept)
                    assert walked == expected
                    for page_size in (1, 7, 50):
                        indexed = await _pages(store, tenant, page_size, accept, states=states, labels=labels)
                        assert indexed == expected, (tenant, states, labels, page_size)
                page, _ = await store.list(tenant, 20, "", _matches([S], {}), states=[S])
                assert page and page == [await store.get(tenant, job.id) for job in page]  # every field
            return made
        finally:
            await store.redis.aclose()

    made = asyncio.run(run())
    assert not set(made["a"]) & set(made["b"])
    assert {j.state for j in made["a"].values()} == set(PATHS)


def test_the_smallest_index_is_read(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            for team in "xxxy":
                job, _ = await store.create("t", pb.Job(id=new_job_id(), labels={"team": team}))
            running = await store.update("t", job.id, _move(R))
            keys = store.keys
            by_label = await store._list_sources("t", [Q], {"team": "y"})
            by_state = await store._list_sources("t", [R], {"team": "x"})
            none = await store._list_sources("t", [Q], {"team": "nobody"})
            page, _ = await store.list("t", 10, "", _matches([R], {"team": "y"}), states=[R], labels={"team": "y"})
            return keys, by_label, by_state, none, page, running
        finally:
            await store.redis.aclose()

    keys, by_label, by_state, none, page, running = asyncio.run(run())
    assert by_label == [keys.tenant_label("t", "team", "y")]
    assert by_state == [keys.tenant_state("t", R)]
    assert none == []
    assert [j.id for j in page] == [running.id]


def _where(store, tenant: str, job_id: str) -> list[int]:
    return [s for s in STATES if store.redis.zscore(store.keys.tenant_state(tenant, s), job_id) is not None]


def test_a_state_change_moves_the_id_between_state_indexes(redis_url, prefix):
    async def create():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            job, _ = await store.create("t", pb.Job(id=new_job_id(), labels={"team": "x"}))
            return job
        finally:
            await store.redis.aclose()

    job = asyncio.run(create())
    store = JobStore.from_url(redis_url, prefix)
    assert _where(store, "t", job.id) == [Q]
    for to in (R, C, X):
        store.update(job.id, _move(to))  # the worker's store: it never names the tenant
        assert _where(store, "t", job.id) == [to]
    label = store.keys.tenant_label("t", "team", "x")
    assert store.redis.zrange(label, 0, -1) == [job.id.encode()]
    assert _where(store, "other", job.id) == []


def test_a_lagging_index_never_lets_a_wrong_job_through(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            job, _ = await store.create("t", pb.Job(id=new_job_id()))
            await store.update("t", job.id, _move(X))
            await store.redis.zadd(store.keys.tenant_state("t", R), {job.id: 0})  # a stale entry
            stale, _ = await store.list("t", 10, "", _matches([R], {}), states=[R])
            await store.delete_job(job.id)
            left = [k async for k in store.redis.scan_iter(f"{prefix}:tenant:*")]
            return stale, left
        finally:
            await store.redis.aclose()

    stale, left = asyncio.run(run())
    assert stale == []
    assert left == []  # the stale entry went with the job


def test_retention_removes_the_job_from_every_index(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            keep, _ = await store.create("t", pb.Job(id=new_job_id(), labels={"team": "x", "tier": "gold"}))
            gone, _ = await store.create("t", pb.Job(id=new_job_id(), labels={"team": "x", "tier": "gold"}))
            for job in (keep, gone):
                for to in (R, S):
                    await store.update("t", job.id, _move(to))
            await store.delete_job(gone.id)
            members = {}
            async for key in store.redis.scan_iter(f"{prefix}:tenant:*"):
                members[key.decode()] = set(await store.redis.zrange(key, 0, -1))
            return keep, gone, members
        finally:
            await store.redis.aclose()

    keep, gone, members = asyncio.run(run())
    assert len(members) == 4  # the tenant's jobs, SUCCEEDED, team=x, tier=gold
    assert all(ids == {keep.id.encode()} for ids in members.values()), members


async def _forget_indexes(store: AsyncJobStore) -> None:
    """Leaves the keys a store kept before the state and label indexes."""
    async for key in store.redis.scan_iter(f"{store.keys.prefix}:*"):
        if b":state:" in key or b":label:" in key or key == store.keys.index_version().encode():
            await store.redis.delete(key)


def test_backfill_indexes_jobs_recorded_before_the_indexes_once(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            jobs = {t: await _populate(store, t, 60, seed) for seed, t in enumerate(("a", "b"))}
            before = {k async for k in store.redis.scan_iter(f"{prefix}:tenant:*")}
            sizes = {k: await store.redis.zcard(k) for k in before}
            await _forget_indexes(store)
            lost, _ = await store.list("a", 500, "", _matches([S], {}), states=[S])
            assert lost == []  # what the backfill is for
            first = await store.backfill_indexes(batch=7)
            again = await store.backfill_indexes()
            after = {k async for k in store.redis.scan_iter(f"{prefix}:tenant:*")}
            assert after == before
            assert {k: await store.redis.zcard(k) for k in after} == sizes
            for tenant, made in jobs.items():
                for states, labels in FILTERS:
                    accept = _matches(states, labels)
                    expected = sorted((i for i, j in made.items() if accept(j)), reverse=True)
                    assert await _pages(store, tenant, 9, accept, states=states, labels=labels) == expected
            await store.redis.delete(store.keys.index_version())
            third = await store.backfill_indexes()  # run again: nothing changes
            assert {k: await store.redis.zcard(k) for k in after} == sizes
            return first, again, third
        finally:
            await store.redis.aclose()

    first, again, third = asyncio.run(run())
    assert (first, again, third) == (120, 0, 120)


def test_backfill_leaves_a_job_that_moved_since_it_was_read(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            job, _ = await store.create("t", pb.Job(id=new_job_id()))
            await store.update("t", job.id, _move(R))
            # The backfill read QUEUED; the job is RUNNING by the time it writes.
            queued = store.keys.tenant_state("t", Q)
            added = await store._backfill(keys=[store.keys.job(job.id), queued], args=[Q, job.id])
            return added, await store.redis.zcard(queued)
        finally:
            await store.redis.aclose()

    assert asyncio.run(run()) == (0, 0)


def test_the_server_backfills_at_start(env, redis_url):
    prefix = f"{env['PRUNING_KEY_PREFIX']}:indexes"  # its own keys; the session's env removes them

    async def populate():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            jobs = await _populate(store, "default", 40, seed=3)
            await _forget_indexes(store)
            return jobs
        finally:
            await store.redis.aclose()

    jobs = asyncio.run(populate())
    server = ServerThread(settings_for(env, key_prefix=prefix))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.PruningServiceStub(channel)
            for states, labels in FILTERS:
                request = pb.ListJobsRequest(page_size=500, states=states, labels=labels)
                listed = [j.id for j in stub.ListJobs(request).jobs]
                accept = _matches(states, labels)
                assert listed == sorted((i for i, j in jobs.items() if accept(j)), reverse=True)
    finally:
        server.stop()
    assert redis.Redis.from_url(redis_url).get(f"{prefix}:index-version") == b"1"
