"""Per-tenant artifact records over shared bytes, and retention: ended jobs, their events and
old artifact records go, and the bytes once no record points to them."""

from __future__ import annotations

import json
import time

import grpc
import pytest
import redis
from hostile import hostile_server, keras_bytes, npz_bytes, tiny  # noqa: F401 - fixture

from conftest import settings_for, wait_for
from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_core.blobs import BlobStore
from pruning_core.objectstore import LocalStore
from pruning_core.store import JobStore

pytestmark = pytest.mark.integration


def _meta(key: str):
    return (("x-api-key", key),)


def _upload(stub, method: str, data: bytes, filename: str, key: str) -> pb.Artifact:
    requests = [pb.UploadRequest(header=pb.UploadHeader(filename=filename)), pb.UploadRequest(chunk=data)]
    return getattr(stub, method)(iter(requests), metadata=_meta(key))


def test_two_tenants_uploading_the_same_bytes_each_keep_their_record(env, tmp_path):
    server = hostile_server(env, "records", artifact_dir=str(tmp_path / "artifacts"))
    store = JobStore.from_url(env["PRUNING_REDIS_URL"], env["PRUNING_KEY_PREFIX"])
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.PruningServiceStub(channel)
            data = keras_bytes()
            a = _upload(stub, "UploadModel", data, "from-a.keras", "key-a")
            time.sleep(0.01)
            b = _upload(stub, "UploadModel", data, "from-b.keras", "key-b")
            assert a.id == b.id  # the same bytes, stored once
            assert (a.filename, b.filename) == ("from-a.keras", "from-b.keras")
            record_a, record_b = store.get_artifact("tenant-a", a.id), store.get_artifact("tenant-b", b.id)
            assert record_a.filename == "from-a.keras" and record_b.filename == "from-b.keras"
            assert record_a.created < record_b.created
            assert len(list((tmp_path / "artifacts").glob("*/*"))) == 1
    finally:
        server.stop()


def test_retention_deletes_ended_jobs_old_records_and_unowned_bytes(env, tmp_path):
    artifacts = tmp_path / "artifacts"
    prefix = f"{env['PRUNING_KEY_PREFIX']}:retention"  # its own keys: other tests' jobs are not its to expire
    server = hostile_server(
        env,
        "retention",
        key_prefix=prefix,
        artifact_dir=str(artifacts),
        job_retention_s=1,
        artifact_retention_s=2,
        housekeeping_interval_s=0.2,
        sweep_min_age_s=0,
    )
    settings = settings_for(env, key_prefix=prefix)
    client = redis.Redis.from_url(env["PRUNING_REDIS_URL"])
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.PruningServiceStub(channel)
            model = _upload(stub, "UploadModel", keras_bytes(), "m.keras", "key-a")
            data = _upload(stub, "UploadDataset", npz_bytes(seed=7), "d.npz", "key-a")
            spec = pb.JobSpec(model_id=model.id)
            spec.dataset.artifact_id = data.id
            spec.pruning.schedule.constant_sparsity.target_sparsity = 0.5
            ended = stub.CreateJob(pb.CreateJobRequest(spec=spec, idempotency_key="k1"), metadata=_meta("key-a"))
            queued = stub.CreateJob(pb.CreateJobRequest(spec=spec), metadata=_meta("key-a"))
            stub.CancelJob(pb.CancelJobRequest(job_id=ended.id), metadata=_meta("key-a"))
            events_key = f"{settings.key_prefix}:events:{ended.id}"
            assert client.exists(events_key)

            def gone(job_id: str) -> bool:
                try:
                    stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=_meta("key-a"))
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND
                    return True
                return False

            wait_for(lambda: gone(ended.id), 20, what="the ended job to be deleted")
            assert not client.exists(events_key)
            listed = stub.ListJobs(pb.ListJobsRequest(), metadata=_meta("key-a")).jobs
            assert [job.id for job in listed] == [queued.id]  # a job that has not ended stays
            assert not gone(queued.id)
            # The idempotency key went with its job: the same key makes a new one.
            again = stub.CreateJob(pb.CreateJobRequest(spec=spec, idempotency_key="k1"), metadata=_meta("key-a"))
            assert again.id != ended.id

            # Past their retention, the records and bytes of a job's inputs stay while it is queued
            blobs = BlobStore(artifacts)
            time.sleep(3)  # the retention (2 s) and a few passes (0.2 s)
            for artifact in (model, data):
                stub.GetArtifact(pb.GetArtifactRequest(artifact_id=artifact.id), metadata=_meta("key-a"))
                assert blobs.path(artifact.id).exists()
            for job_id in (queued.id, again.id):  # once no job reads them, they go
                stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=_meta("key-a"))
            wait_for(lambda: not blobs.path(model.id).exists(), 20, what="the unowned model bytes to be deleted")
            with pytest.raises(grpc.RpcError) as error:
                next(stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=model.id), metadata=_meta("key-a")))
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_bytes_stay_while_another_tenant_holds_a_record(env, tmp_path):
    import asyncio

    from pruning_core.store import AsyncJobStore
    from pruning_server import reaper

    artifacts = tmp_path / "artifacts"
    server = hostile_server(env, "shared", artifact_dir=str(artifacts))
    settings = settings_for(env, artifact_dir=str(artifacts), sweep_min_age_s=0, artifact_retention_s=0)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.PruningServiceStub(channel)
            data = keras_bytes(version="2.16.0")
            shared = _upload(stub, "UploadModel", data, "a.keras", "key-a")
            _upload(stub, "UploadModel", data, "b.keras", "key-b")

            async def forget_a() -> tuple[bool, dict]:
                store = AsyncJobStore.from_url(env["PRUNING_REDIS_URL"], env["PRUNING_KEY_PREFIX"])
                try:
                    last = await store.delete_artifact("tenant-a", shared.id)
                    return last, await reaper.enforce_retention(store, LocalStore(artifacts), settings)
                finally:
                    await store.redis.aclose()

            last, counts = asyncio.run(forget_a())
            assert not last and counts["blobs"] == 0
            assert BlobStore(artifacts).path(shared.id).exists()
            chunks = stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=shared.id), metadata=_meta("key-b"))
            assert b"".join(c.data for c in chunks) == data
            with pytest.raises(grpc.RpcError) as error:
                next(stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=shared.id), metadata=_meta("key-a")))
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop()


def test_retention_deletes_ended_sweeps_with_their_index_entries_and_idempotency_key(env, tmp_path):
    prefix = f"{env['PRUNING_KEY_PREFIX']}:sweep-retention"
    server = hostile_server(
        env,
        "sweep-retention",
        key_prefix=prefix,
        artifact_dir=str(tmp_path / "artifacts"),
        job_retention_s=1,
        housekeeping_interval_s=0.2,
    )
    client = redis.Redis.from_url(env["PRUNING_REDIS_URL"])
    try:
        with grpc.insecure_channel(server.target) as channel:
            jobs, stub = pb_grpc.PruningServiceStub(channel), pb_grpc.SweepServiceStub(channel)
            model = _upload(jobs, "UploadModel", keras_bytes(), "m.keras", "key-a")
            data = _upload(jobs, "UploadDataset", npz_bytes(seed=7), "d.npz", "key-a")
            base = pb.JobSpec(model_id=model.id)
            base.dataset.artifact_id = data.id
            base.pruning.schedule.constant_sparsity.target_sparsity = 0.5
            request = pb.CreateSweepRequest(spec=pb.SweepSpec(base=base, sparsities=[0.5, 0.7]), idempotency_key="s1")
            ended = stub.CreateSweep(request, metadata=_meta("key-a"))
            going = stub.CreateSweep(pb.CreateSweepRequest(spec=request.spec), metadata=_meta("key-a"))
            stub.CancelSweep(pb.CancelSweepRequest(sweep_id=ended.id), metadata=_meta("key-a"))

            def gone(sweep_id: str) -> bool:
                try:
                    stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id), metadata=_meta("key-a"))
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND
                    return True
                return False

            wait_for(lambda: gone(ended.id), 20, what="the ended sweep to be deleted")
            assert not client.exists(f"{prefix}:sweep:{ended.id}")
            listed = stub.ListSweeps(pb.ListSweepsRequest(), metadata=_meta("key-a")).sweeps
            assert [s.id for s in listed] == [going.id]  # a sweep that has not ended stays
            assert client.zrange(f"{prefix}:tenant:tenant-a:sweeps", 0, -1) == [going.id.encode()]
            assert ended.trials
            for trial in ended.trials:  # its trials went as jobs
                with pytest.raises(grpc.RpcError) as error:
                    jobs.GetJob(pb.GetJobRequest(job_id=trial.job_id), metadata=_meta("key-a"))
                assert error.value.code() == grpc.StatusCode.NOT_FOUND
            again = stub.CreateSweep(request, metadata=_meta("key-a"))  # the key went with its sweep
            assert again.id != ended.id
    finally:
        server.stop()


def test_a_job_store_that_lost_its_data_does_not_take_the_blobs_with_it(env, tmp_path):
    """Redis wiped (or replaced empty): no record of the blobs written before is left, and the
    housekeeping keeps them; a blob with no record written since still goes."""
    import asyncio

    from pruning_core.store import AsyncJobStore
    from pruning_server import reaper

    prefix = f"{env['PRUNING_KEY_PREFIX']}:wiped"
    artifacts = tmp_path / "artifacts"
    settings = settings_for(env, key_prefix=prefix, artifact_dir=str(artifacts), sweep_min_age_s=0)
    server = hostile_server(env, "wiped", key_prefix=prefix, artifact_dir=str(artifacts))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.PruningServiceStub(channel)
            model = _upload(stub, "UploadModel", keras_bytes(version="2.16.0"), "a.keras", "key-a")
    finally:
        server.stop()
    client = redis.Redis.from_url(env["PRUNING_REDIS_URL"])
    client.delete(*client.scan_iter(f"{prefix}:*"))  # the job store loses everything
    time.sleep(0.05)

    async def housekeeping() -> dict:
        store = AsyncJobStore.from_url(env["PRUNING_REDIS_URL"], prefix)
        try:
            return await reaper.enforce_retention(store, LocalStore(artifacts), settings)
        finally:
            await store.redis.aclose()

    try:
        assert asyncio.run(housekeeping())["blobs"] == 0
        assert BlobStore(artifacts).path(model.id).exists()  # kept: written before the store was born again
        time.sleep(0.05)  # past the file system clock's tick: the orphan is written after the birth
        orphan = tmp_path / "orphan.bin"
        orphan.write_bytes(b"no record points here")
        orphan_id = LocalStore(artifacts).put_file(orphan).id
        assert asyncio.run(housekeeping())["blobs"] == 1
        assert not BlobStore(artifacts).path(orphan_id).exists() and BlobStore(artifacts).path(model.id).exists()
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_checkpoints_of_ended_and_unknown_jobs_go(env, tiny, tmp_path):  # noqa: F811
    """Checkpoints whose job ended (its worker died before deleting them) or that the job store
    no longer knows (Redis lost its data mid-job) go at housekeeping; a live job's stay."""
    import asyncio

    from pruning_client import Client, job_spec
    from pruning_core.store import AsyncJobStore
    from pruning_server import reaper

    artifacts = tmp_path / "artifacts"
    server = hostile_server(env, "checkpoints", artifact_dir=str(artifacts))
    settings = settings_for(env, artifact_dir=str(artifacts), sweep_min_age_s=0, artifact_retention_s=0)
    try:
        with Client(server.target, api_key="key-a") as client:
            spec = job_spec(client.upload_model(tiny["keras"]).id, dataset=client.upload_dataset(tiny["data"]).id)
            live, ended = client.submit(spec), client.submit(spec)
            client.cancel_job(ended.id)
        unknown = "0123456789abcdef01234567"
        for job_id in (live.id, ended.id, unknown):
            (artifacts / "checkpoints" / job_id).mkdir(parents=True)
            (artifacts / "checkpoints" / job_id / "latest.json").write_text("{}")

        async def housekeeping() -> dict:
            store = AsyncJobStore.from_url(env["PRUNING_REDIS_URL"], env["PRUNING_KEY_PREFIX"])
            try:
                return await reaper.enforce_retention(store, LocalStore(artifacts), settings)
            finally:
                await store.redis.aclose()

        counts = asyncio.run(housekeeping())
        assert counts["checkpoints"] == 2
        assert sorted(p.name for p in (artifacts / "checkpoints").iterdir()) == [live.id]
    finally:
        server.stop()


def test_a_store_another_deployment_uses_is_not_swept(env, tmp_path, caplog):
    """Two deployments (job stores) over one artifact directory would each delete the other's
    new uploads as unknown: the first to sweep marks the store, the other deletes nothing and
    says why. A job store that lost its data (a new id, the same Redis and key prefix) takes its
    store back."""
    import asyncio
    import logging
    import os

    from pruning_core.store import AsyncJobStore
    from pruning_server import reaper

    artifacts = tmp_path / "artifacts"
    blobs = LocalStore(artifacts)
    source = tmp_path / "blob"

    def settings(name: str):
        return settings_for(
            env, key_prefix=f"{env['PRUNING_KEY_PREFIX']}:{name}", artifact_dir=str(artifacts), sweep_min_age_s=0
        )

    async def sweep(name: str, *, forget_id: bool = False) -> dict:
        store = AsyncJobStore.from_url(env["PRUNING_REDIS_URL"], settings(name).key_prefix)
        try:
            await store.born()
            if forget_id:
                await store.redis.delete(store.keys.deployment())
            return await reaper.enforce_retention(store, blobs, settings(name))
        finally:
            await store.redis.aclose()

    def unknown_blob(content: bytes) -> str:
        time.sleep(0.05)  # written after both job stores were born
        source.write_bytes(content)
        artifact_id = blobs.put_file(source).id
        return artifact_id

    client = redis.Redis.from_url(env["PRUNING_REDIS_URL"])
    try:
        asyncio.run(sweep("first"))  # marks the store
        asyncio.run(sweep("second"))  # born, so that later blobs count as written since
        theirs = unknown_blob(b"an upload the first deployment does not know")
        with caplog.at_level(logging.ERROR, logger="pruning_server.reaper"):
            counts = asyncio.run(sweep("second"))
        assert counts["blobs"] == 0 and blobs.exists(theirs)
        assert "the artifact store is also used by another deployment" in caplog.text
        assert ":first" in json.loads((artifacts / ".deployment").read_bytes())["key_prefix"]
        # the first deployment's Redis lost its data (and its id): it takes the store back
        counts = asyncio.run(sweep("first", forget_id=True))
        assert counts["blobs"] == 1 and not blobs.exists(theirs)
        assert os.path.exists(artifacts / ".deployment")
        # a mark emptied or edited names no one: nobody takes the store over
        (artifacts / ".deployment").write_bytes(b"")
        kept = unknown_blob(b"another upload")
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="pruning_server.reaper"):
            assert asyncio.run(sweep("second"))["blobs"] == 0
        assert blobs.exists(kept) and "is unreadable" in caplog.text
        assert (artifacts / ".deployment").read_bytes() == b""
    finally:
        for name in ("first", "second"):
            for key in client.scan_iter(f"{env['PRUNING_KEY_PREFIX']}:{name}:*"):
                client.delete(key)
