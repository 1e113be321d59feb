"""A job reads its model and dataset until it ends, and a sweep its base's until it is no
longer driven: on a real Redis, neither a DeleteArtifact nor the retention removes their
records meanwhile (and so the housekeeping keeps their bytes), and a job whose input was
deleted between its check and its record is not recorded."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import pytest
import redis

from pruning.v1 import pruning_pb2 as pb
from pruning_core.store import ArtifactInUse, ArtifactRecord, AsyncJobStore, InputGone, new_job_id
from pruning_core.sweeps import SweepStore

pytestmark = pytest.mark.integration


@pytest.fixture()
def prefix(redis_url):
    name = f"pruning-pins-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)


def _record(name: str, kind: int) -> ArtifactRecord:
    artifact_id = hashlib.sha256(name.encode()).hexdigest()
    return ArtifactRecord(artifact_id, kind, "keras" if kind == pb.ARTIFACT_KIND_MODEL else "npz", name, 10, 1.0, {})


def _spec(model: ArtifactRecord, data: ArtifactRecord | None = None) -> pb.JobSpec:
    spec = pb.JobSpec(model_id=model.id)
    if data is not None:
        spec.dataset.artifact_id = data.id
    return spec


def _end(job: pb.Job) -> list[pb.JobEvent]:
    job.state = pb.JOB_STATE_CANCELLED
    return []


def test_a_job_that_has_not_ended_keeps_its_inputs(redis_url, prefix):
    async def scenario() -> None:
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            model, data = _record("m.keras", pb.ARTIFACT_KIND_MODEL), _record("d.npz", pb.ARTIFACT_KIND_DATASET)
            for record in (model, data):
                await store.put_artifact("a", record)
            job, _ = await store.create("a", pb.Job(id=new_job_id(), spec=_spec(model, data)))
            other, _ = await store.create("a", pb.Job(id=new_job_id(), spec=_spec(model)))
            with pytest.raises(ArtifactInUse) as used:
                await store.delete_artifact("a", model.id)
            assert used.value.readers == 2 and used.value.reader in (f"job {job.id}", f"job {other.id}")
            # the retention leaves them too, past any cutoff
            with pytest.raises(ArtifactInUse):
                await store.expire_artifact("a", data.id, time.time() + 3600)
            assert (await store.get_artifact("a", data.id)).id == data.id
            await store.update("a", other.id, _end)
            with pytest.raises(ArtifactInUse) as used:
                await store.delete_artifact("a", model.id)
            assert (used.value.readers, used.value.reader) == (1, f"job {job.id}")
            await store.update("a", job.id, _end)  # ended: it lets go
            assert await store.delete_artifact("a", model.id)
            assert await store.expire_artifact("a", data.id, time.time() + 3600) == (True, True)
            # another tenant's record of the same bytes is not read by this tenant's jobs
            await store.put_artifact("b", model)
            await store.put_artifact("a", model)
            await store.create("a", pb.Job(id=new_job_id(), spec=_spec(model)))
            assert await store.delete_artifact("b", model.id) is False  # tenant a's record remains
        finally:
            await store.redis.aclose()

    asyncio.run(scenario())


def test_a_job_whose_input_went_meanwhile_is_not_recorded(redis_url, prefix):
    async def scenario() -> None:
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            model, data = _record("m.keras", pb.ARTIFACT_KIND_MODEL), _record("d.npz", pb.ARTIFACT_KIND_DATASET)
            await store.put_artifact("a", model)
            job = pb.Job(id=new_job_id(), spec=_spec(model, data))
            with pytest.raises(InputGone) as gone:
                await store.create("a", job)
            assert gone.value.args[0] == data.id
            assert not await store.redis.exists(store.keys.job(job.id))
            assert not await store.redis.exists(store.keys.pins("a", model.id))  # nothing pinned
            assert await store.delete_artifact("a", model.id)
        finally:
            await store.redis.aclose()

    asyncio.run(scenario())


def test_a_sweep_keeps_its_base_between_its_trials(redis_url, prefix):
    async def scenario() -> None:
        store = AsyncJobStore.from_url(redis_url, prefix)
        sweeps = SweepStore(store.redis, prefix)
        try:
            model = _record("m.keras", pb.ARTIFACT_KIND_MODEL)
            await store.put_artifact("a", model)
            sweep = pb.Sweep(id=new_job_id(), spec=pb.SweepSpec(base=_spec(model), sparsities=[0.5]))
            await sweeps.create("a", sweep, "", "")
            with pytest.raises(ArtifactInUse) as used:
                await store.delete_artifact("a", model.id)
            assert used.value.reader == f"sweep {sweep.id}"

            def end(found: pb.Sweep) -> bool:
                found.state = pb.JOB_STATE_SUCCEEDED
                return True

            await sweeps.update("a", sweep.id, end)  # driven to its end: it lets go of its base
            assert not await store.redis.smembers(store.keys.pins("a", model.id))
            assert await store.delete_artifact("a", model.id)
        finally:
            await store.redis.aclose()

    asyncio.run(scenario())


def test_a_retention_pass_over_records_jobs_still_read_ends_and_takes_the_rest(redis_url, prefix, tmp_path):
    """Records a job reads stay listed past their time: the pass walks past them (it went round
    them forever) and still removes the others."""
    from pruning_core.objectstore import LocalStore
    from pruning_core.settings import Settings
    from pruning_server import reaper

    async def scenario() -> dict[str, int]:
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            read = [_record(f"read{i}.keras", pb.ARTIFACT_KIND_MODEL) for i in range(3)]
            idle = [_record(f"idle{i}.keras", pb.ARTIFACT_KIND_MODEL) for i in range(4)]
            for record in read + idle:
                await store.put_artifact("a", record)
            for record in read:
                await store.create("a", pb.Job(id=new_job_id(), spec=_spec(record)))
            settings = Settings(
                redis_url=redis_url, key_prefix=prefix, artifact_dir=tmp_path / "a", artifact_retention_s=1
            )
            counts = await asyncio.wait_for(reaper.enforce_retention(store, LocalStore(tmp_path / "a"), settings), 30)
            for record in read:
                assert (await store.get_artifact("a", record.id)).id == record.id
            for record in idle:
                with pytest.raises(KeyError):
                    await store.get_artifact("a", record.id)
            return counts
        finally:
            await store.redis.aclose()

    assert asyncio.run(scenario())["records"] == 4


def test_bytes_whose_last_record_expired_go_even_if_the_pass_stopped_first(redis_url, prefix, tmp_path):
    """The retention removed the last record of a blob older than the job store, then stopped
    (a server killed) before deleting the bytes: the next pass deletes them. They were released
    in memory only, and a blob older than the job store with no record is otherwise kept."""
    import os

    from pruning_core.objectstore import LocalStore
    from pruning_core.settings import Settings
    from pruning_server import reaper

    blobs = LocalStore(tmp_path / "a")
    source = tmp_path / "m.keras"
    source.write_bytes(b"an old model")
    artifact_id, size, _ = blobs.put_file(source)
    old = time.time() - 3600
    os.utime(blobs.path(artifact_id), (old, old))  # written before the job store was born
    settings = Settings(
        redis_url=redis_url, key_prefix=prefix, artifact_dir=tmp_path / "a", artifact_retention_s=1, sweep_min_age_s=0
    )

    async def passes() -> None:
        store = AsyncJobStore.from_url(redis_url, prefix)
        try:
            await store.born()
            await store.put_artifact(
                "a", ArtifactRecord(artifact_id, pb.ARTIFACT_KIND_MODEL, "keras", "m.keras", size, 1.0, {})
            )
            remove = blobs.remove

            def killed(*args, **kwargs):
                raise SystemError("the server was killed here")

            blobs.remove = killed  # type: ignore[method-assign]
            with pytest.raises(SystemError):
                await reaper.enforce_retention(store, blobs, settings)
            blobs.remove = remove  # type: ignore[method-assign]
            assert blobs.exists(artifact_id)
            counts = await reaper.enforce_retention(store, blobs, settings)
            assert counts["blobs"] == 1 and not blobs.exists(artifact_id)
            assert artifact_id not in await store.released_ids()  # forgotten once gone
        finally:
            await store.redis.aclose()

    asyncio.run(passes())


def test_jobs_and_sweeps_recorded_before_pins_get_them_once_at_start(redis_url, prefix):
    """A deployment that ran before jobs pinned their inputs: the server's start pins those of
    every job not ended and every sweep still driven, once; a job that ended pins nothing."""

    async def scenario() -> None:
        store = AsyncJobStore.from_url(redis_url, prefix)
        sweeps = SweepStore(store.redis, prefix)
        try:
            model, data = _record("m.keras", pb.ARTIFACT_KIND_MODEL), _record("d.npz", pb.ARTIFACT_KIND_DATASET)
            base = _record("base.keras", pb.ARTIFACT_KIND_MODEL)
            for record in (model, data, base):
                await store.put_artifact("a", record)
            queued, _ = await store.create("a", pb.Job(id=new_job_id(), spec=_spec(model, data)))
            ended, _ = await store.create("a", pb.Job(id=new_job_id(), spec=_spec(base)))
            await store.update("a", ended.id, _end)
            sweep = pb.Sweep(id=new_job_id(), spec=pb.SweepSpec(base=_spec(base), sparsities=[0.5]))
            await sweeps.create("a", sweep, "", "")
            # as the records were written before pins: none, and no 'pins' field
            for record in (model, data, base):
                await store.redis.delete(store.keys.pins("a", record.id))
            for job in (queued, ended):
                await store.redis.hdel(store.keys.job(job.id), "pins")
            await store.redis.delete(store.keys.pins_version())
            assert await store.delete_artifact("a", data.id)  # unpinned: it could go
            await store.put_artifact("a", data)

            assert await store.backfill_pins(batch=1) == 2  # the queued job and the sweep
            assert await store.backfill_pins() == 0  # once
            for record, reader in (
                (model, f"job {queued.id}"),
                (data, f"job {queued.id}"),
                (base, f"sweep {sweep.id}"),
            ):
                with pytest.raises(ArtifactInUse) as used:
                    await store.delete_artifact("a", record.id)
                assert used.value.reader == reader
            assert await store.redis.hget(store.keys.job(ended.id), "pins") is None
            await store.update("a", queued.id, _end)  # the job pinned at start lets go as one recorded with pins
            assert not await store.redis.smembers(store.keys.pins("a", model.id))
            assert await store.delete_artifact("a", model.id)
        finally:
            await store.redis.aclose()

    asyncio.run(scenario())
