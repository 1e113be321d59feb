"""The per-tenant time indexes of artifact records on a real Redis: a page of ListArtifacts
reads the tenant's time index (of all kinds, or of one kind) and answers what sorting every
record answers, page by page; a record written again keeps its place (so a listing reaches it)
and moves between kinds, one removed leaves every index; records written before the indexes
are backfilled once."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid

import grpc
import pytest
import redis

from conftest import ServerThread, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_core.store import ARTIFACT_KINDS, ArtifactRecord, AsyncJobStore

pytestmark = pytest.mark.integration

M, D, E, R = pb.ARTIFACT_KIND_MODEL, pb.ARTIFACT_KIND_DATASET, pb.ARTIFACT_KIND_EXPORT, pb.ARTIFACT_KIND_REPORT


@pytest.fixture()
def prefix(redis_url):
    name = f"pruning-unit-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)


def _id(n: int | str) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _record(n: int | str, kind: int, created: float) -> ArtifactRecord:
    return ArtifactRecord(_id(n), kind, "keras", f"f{n}.keras", 100 + len(str(n)), created, {"summary": {"x": 1}})


async def _walk(store: AsyncJobStore, tenant: str, kind: int, size: int) -> list[tuple[float, str, int]]:
    """Every record a listing reaches, page by page: (created, id, kind)."""
    out: list[tuple[float, str, int]] = []
    after = None
    for _ in range(10_000):
        page, after = await store.artifacts_page(tenant, kind, after, size)
        assert len(page) <= size
        out += [(r.created, r.id, r.kind) for r in page]
        if after is None:
            return out
    raise AssertionError("the listing never ended")


def _expected(records: dict[str, ArtifactRecord], kind: int) -> list[tuple[float, str, int]]:
    """Newest first, the same time by id descending."""
    chosen = [(r.created, r.id, r.kind) for r in records.values() if not kind or r.kind == kind]
    return sorted(chosen, reverse=True)


async def _populate(store: AsyncJobStore, tenant: str, count: int, seed: int) -> dict[str, ArtifactRecord]:
    rng = random.Random(seed)
    records = {}
    base = 1.7e9 + seed
    for n in range(count):
        # a quarter share their time with another record: the id orders them
        created = base + (n // 2 if n % 4 == 0 else n) + 0.125
        record = _record(f"{tenant}-{n}", rng.choice([M, D, E, R]), created)
        await store.put_artifact(tenant, record)
        records[record.id] = record
    return records


def test_pages_follow_the_time_index_of_every_kind_and_of_each(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            made = {t: await _populate(store, t, 70, seed) for seed, t in enumerate(("a", "b"))}
            for tenant, records in made.items():
                for kind in (0, *ARTIFACT_KINDS):
                    for size in (1, 7, 500):
                        assert await _walk(store, tenant, kind, size) == _expected(records, kind), (tenant, kind, size)
            assert await _walk(store, "nobody", 0, 5) == []
            page, after = await store.artifacts_page("a", 0, None, 3)
            assert [r.info for r in page] == [{}, {}, {}]  # read without their info
            assert after == (page[-1].created, page[-1].id)
        finally:
            await store.redis.aclose()

    asyncio.run(run())


def test_a_record_written_again_keeps_its_place_moves_between_kinds_and_one_removed_leaves(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            records = await _populate(store, "a", 12, 3)
            first = {i: r.created for i, r in records.items()}  # when each was first stored

            def expected(kind: int) -> list[tuple[float, str, int]]:
                return sorted(
                    ((first[i], i, r.kind) for i, r in records.items() if not kind or r.kind == kind), reverse=True
                )

            async def listed(kind: int, size: int) -> list[tuple[float, str, int]]:
                walked = await _walk(store, "a", kind, size)
                assert [i for _, i, _ in walked] == [i for _, i, _ in expected(kind)], kind
                return walked

            oldest = min(records.values(), key=lambda r: r.created)
            other = D if oldest.kind != D else M
            # a listing begun before the record is written again still reaches it
            page, after = await store.artifacts_page("a", 0, None, 4)
            # written again (a held upload): same kind, new time; it keeps its place
            refreshed = ArtifactRecord(oldest.id, oldest.kind, "keras", "again.keras", oldest.size, 1.8e9, {})
            assert await store.refresh_artifact("a", refreshed)
            records[oldest.id] = refreshed
            rest = []
            while after is not None:
                more, after = await store.artifacts_page("a", 0, after, 4)
                rest += more
            assert [r.id for r in page + rest] == [i for _, i, _ in expected(0)]
            assert rest[-1].id == oldest.id and rest[-1].created == 1.8e9  # its record as written again
            # written again as another kind: it moves to that kind's index, at its place
            moved = ArtifactRecord(oldest.id, other, "keras", "moved.keras", oldest.size, 1.9e9, {})
            await store.put_artifact("a", moved)
            records[oldest.id] = moved
            for kind in (0, *ARTIFACT_KINDS):
                await listed(kind, 4)
            # refreshing a record that is gone brings nothing back
            await store.delete_artifact("a", oldest.id)
            del records[oldest.id]
            assert not await store.refresh_artifact("a", refreshed)
            for kind in (0, *ARTIFACT_KINDS):
                await listed(kind, 4)
            # stored again after its removal: a new artifact of the tenant's, at the head
            await store.put_artifact("a", moved)
            records[oldest.id], first[oldest.id] = moved, moved.created
            assert (await listed(0, 5))[0][1] == oldest.id
            # the retention's removal too
            newest = max(records.values(), key=lambda r: r.created)
            removed, _ = await store.expire_artifact("a", newest.id, newest.created + 1)
            assert removed
            del records[newest.id]
            await listed(0, 100)
            for kind in (0, *ARTIFACT_KINDS):
                members = await store.redis.zrange(store.keys.tenant_artifacts_by_time("a", kind), 0, -1)
                assert sorted(m.decode() for m in members) == sorted(
                    r.id for r in records.values() if not kind or r.kind == kind
                )
        finally:
            await store.redis.aclose()

    asyncio.run(run())


def test_records_written_before_the_indexes_are_backfilled_once(redis_url, prefix):
    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            made = {t: await _populate(store, t, 40, seed) for seed, t in enumerate(("a", "b"))}
            # a shared record from before per-tenant records: the tenant lists it too
            legacy = _record("legacy", D, 1.75e9)
            await store.redis.hset(store.keys.artifact(legacy.id), mapping=legacy.to_mapping())
            await store.redis.sadd(store.keys.tenant_artifacts("a"), legacy.id)
            made["a"][legacy.id] = legacy
            # a job index whose label value ends as a tenant's set of artifacts does
            await store.redis.zadd(f"{prefix}:tenant:a:label:1:k=x:artifacts", {"job": 0})
            indexes = [k async for k in store.redis.scan_iter(f"{prefix}:tenant:*:artifacts-by-time*")]
            await store.redis.delete(*indexes)
            assert not await store.redis.exists(store.keys.tenant_artifacts_by_time("a"))  # what the backfill is for
            assert await store.backfill_artifact_index() == 81
            assert await store.backfill_artifact_index() == 0  # once
            for tenant, records in made.items():
                for kind in (0, *ARTIFACT_KINDS):
                    assert await _walk(store, tenant, kind, 9) == _expected(records, kind), (tenant, kind)
            again = {k async for k in store.redis.scan_iter(f"{prefix}:tenant:*:artifacts-by-time*")}
            assert again == set(indexes)  # the same sets, and no set of another name
            await store.redis.delete(store.keys.artifact_index_version())
            assert await store.backfill_artifact_index() == 81  # again: nothing changes
            for tenant, records in made.items():
                assert await _walk(store, tenant, 0, 500) == _expected(records, 0)
        finally:
            await store.redis.aclose()

    asyncio.run(run())


def test_a_listing_indexes_again_what_a_process_from_before_the_index_wrote_or_removed(redis_url, prefix):
    """A rolling upgrade: an old worker stores an export, an old server removes a record, both
    without the sets by time, after the backfill ran."""

    async def run():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            records = await _populate(store, "a", 20, 7)
            await store.backfill_artifact_index()
            # an old process's record: the record and the tenant's set, no index
            old = _record("old-export", E, 1.8e9)
            await store.redis.hset(store.keys.tenant_artifact("a", old.id), mapping=old.to_mapping())
            await store.redis.sadd(store.keys.tenant_artifacts("a"), old.id)
            records[old.id] = old
            for kind in (0, *ARTIFACT_KINDS):
                assert await _walk(store, "a", kind, 6) == _expected(records, kind), kind
            # an old process's removal: the record and its set entry, the index left
            gone = next(iter(records))
            await store.redis.delete(store.keys.tenant_artifact("a", gone))
            await store.redis.srem(store.keys.tenant_artifacts("a"), gone)
            del records[gone]
            for kind in (0, *ARTIFACT_KINDS):
                assert await _walk(store, "a", kind, 6) == _expected(records, kind), kind
            for kind in (0, *ARTIFACT_KINDS):
                members = {
                    m.decode() for m in await store.redis.zrange(store.keys.tenant_artifacts_by_time("a", kind), 0, -1)
                }
                assert members == {i for i, r in records.items() if not kind or r.kind == kind}
        finally:
            await store.redis.aclose()

    asyncio.run(run())


def test_the_server_backfills_at_start(env, redis_url):
    prefix = f"{env['PRUNING_KEY_PREFIX']}:artifact-index"  # its own keys; the session's env removes them

    async def populate():
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            records = await _populate(store, "default", 30, seed=5)
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:tenant:*:artifacts-by-time*")])
            return records
        finally:
            await store.redis.aclose()

    records = asyncio.run(populate())
    server = ServerThread(settings_for(env, key_prefix=prefix))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.PruningServiceStub(channel)
            for kind in (0, *ARTIFACT_KINDS):
                listed = stub.ListArtifacts(pb.ListArtifactsRequest(page_size=500, kind=kind)).artifacts
                assert [a.id for a in listed] == [i for _, i, _ in _expected(records, kind)]
    finally:
        server.stop()
    assert redis.Redis.from_url(redis_url).get(f"{prefix}:artifact-index-version") == b"1"
