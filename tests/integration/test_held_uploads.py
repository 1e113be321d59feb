"""An upload whose header announces content the tenant already holds is answered after the
header: nothing more is read, the record's retention starts over. Another tenant's content or
a misnamed model is read and checked as any upload; content held as the other upload kind is
refused."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import grpc
import pytest
import redis

from conftest import ServerThread, delete_keys, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def held_settings(env, tmp_path_factory):
    """A deployment of its own (key prefix, artifacts), which the retention below may sweep."""
    settings = settings_for(
        env,
        api_keys="key-a=alpha,key-b=beta",
        queue=env["PRUNING_QUEUE"] + "-held",
        key_prefix=env["PRUNING_KEY_PREFIX"] + "-held",
        state_dir=tmp_path_factory.mktemp("held"),
        max_upload_bytes=128 << 20,
        artifact_retention_s=100,
        sweep_min_age_s=0,
    )
    yield settings
    delete_keys(env["PRUNING_REDIS_URL"], settings.key_prefix)


@pytest.fixture(scope="module")
def tenants(held_settings):
    srv = ServerThread(held_settings)
    yield srv
    srv.stop()


def _announced(stub_call, filename: str, content: bytes, chunks, metadata):
    """Calls ``stub_call`` with a header announcing ``content`` (sha256, size), then ``chunks``."""
    header = pb.UploadHeader(filename=filename, size=len(content), sha256=hashlib.sha256(content).hexdigest())
    return stub_call(iter([pb.UploadRequest(header=header), *chunks]), timeout=30, metadata=metadata)


def test_held_content_is_answered_after_the_header(tenants, env, files):
    data = files["data"].read_bytes()
    alpha_key = (("x-api-key", "key-a"),)
    with Client(tenants.target, api_key="key-a") as alpha:
        first = alpha.upload_dataset(files["data"])
        time.sleep(0.01)
        # chunks that are not the content: read, they would fail the announced sha256
        garbage = [pb.UploadRequest(chunk=b"\0" * len(data))]
        again = _announced(alpha.stub.UploadDataset, "renamed.npz", data, garbage, alpha_key)
        assert again.id == first.id and again.kind == pb.ARTIFACT_KIND_DATASET
        assert again.filename == "renamed.npz"
        assert again.created_at.ToNanoseconds() > first.created_at.ToNanoseconds()
        prefix = tenants.settings.key_prefix
        by_time = redis.Redis.from_url(env["PRUNING_REDIS_URL"]).zscore(
            f"{prefix}:artifacts-by-time", f"{first.id}:alpha"
        )
        assert by_time == pytest.approx(again.created_at.ToNanoseconds() / 1e9)

        # a stream that never ends after its header: answered all the same
        never = threading.Event()

        def forever():
            yield pb.UploadRequest(
                header=pb.UploadHeader(filename="d.npz", size=len(data), sha256=hashlib.sha256(data).hexdigest())
            )
            never.wait(60)

        assert alpha.stub.UploadDataset(forever(), timeout=30, metadata=alpha_key).id == first.id
        never.set()

        # the same bytes as a model: held as a dataset, refused at the header
        with pytest.raises(grpc.RpcError) as error:
            _announced(alpha.stub.UploadModel, "d.keras", data, [pb.UploadRequest(chunk=data)], alpha_key)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is held as a dataset" in (error.value.details() or "")
        assert (error.value.details() or "").endswith(", not a model: upload the model file (.keras or .h5)")

    with Client(tenants.target, api_key="key-b") as beta:
        # another tenant's content: read and checked, so garbage is refused
        with pytest.raises(grpc.RpcError) as error:
            _announced(beta.stub.UploadDataset, "d.npz", data, garbage, (("x-api-key", "key-b"),))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sha256" in (error.value.details() or "")


def test_a_held_model_misnamed_is_read_and_refused(tenants, files):
    model = files["keras"].read_bytes()
    key = (("x-api-key", "key-a"),)
    with Client(tenants.target, api_key="key-a") as alpha:
        alpha.upload_model(files["keras"])
        with pytest.raises(grpc.RpcError) as error:
            _announced(alpha.stub.UploadModel, "model.h5", model, [pb.UploadRequest(chunk=model)], key)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "h5" in (error.value.details() or "")


@pytest.mark.parametrize("hash_first", [True, False])
def test_sdk_uploads_again_without_sending_when_hashing_first(tenants, files, tmp_path, hash_first):
    import models

    path = models.dataset(tmp_path / "data.npz", n_train=200_000, n_test=64, seed=2)  # 51 MB
    size = path.stat().st_size
    with Client(tenants.target, api_key="key-a", hash_first=hash_first) as alpha:
        first = alpha.upload_dataset(path)
        reported: list[int] = []
        readers_before = {t for t in threading.enumerate() if t.name == "upload-reader"}
        again = alpha.upload_dataset(path, progress=reported.append)
        assert again.id == first.id == hashlib.sha256(path.read_bytes()).hexdigest()
        assert sum(reported) == size
        # hashing first, the answer came after the header: at most the chunks read ahead went
        # out before it (progress reports the rest at once); otherwise every chunk was sent
        if hash_first:
            assert reported[-1] >= size - 16 * 1024 * 1024
        else:
            assert max(reported) <= 1024 * 1024
        time.sleep(0.5)  # the reader thread is stopped, not left blocked on its queue
        assert {t for t in threading.enumerate() if t.name == "upload-reader"} <= readers_before


def test_async_sdk_uploads_again_without_sending(tenants, files):
    from pruning_client.aio import AsyncClient

    async def main():
        async with AsyncClient(tenants.target, api_key="key-a") as alpha:
            first = await alpha.upload_model(files["keras"])
            reported: list[int] = []
            again = await alpha.upload_model(files["keras"], progress=reported.append)
            return first, again, reported

    first, again, reported = asyncio.run(main())
    assert again.id == first.id and sum(reported) == files["keras"].stat().st_size
    assert again.model.layers == first.model.layers  # the summary the first upload's inspection wrote


def _age(env, settings, tenant: str, artifact_id: str, seconds: float) -> None:
    """Makes the tenant's record of the artifact ``seconds`` old (the hash and the index)."""
    client = redis.Redis.from_url(env["PRUNING_REDIS_URL"])
    created = time.time() - seconds
    client.hset(f"{settings.key_prefix}:artifact:{tenant}:{artifact_id}", "created", repr(created))
    client.zadd(f"{settings.key_prefix}:artifacts-by-time", {f"{artifact_id}:{tenant}": created})


def test_a_held_upload_while_the_retention_runs_keeps_record_and_bytes(tenants, held_settings, env, files, tmp_path):
    import models
    from pruning_core.objectstore import open_store
    from pruning_core.store import AsyncJobStore
    from pruning_server.reaper import enforce_retention

    path = models.dataset(tmp_path / "kept.npz", seed=21)
    with Client(tenants.target, api_key="key-a") as alpha:
        artifact = alpha.upload_dataset(path)
        _age(env, held_settings, "alpha", artifact.id, 1000)  # past the retention of 100 s
        blobs = open_store(held_settings)

        async def retention():
            store = AsyncJobStore.from_url(env["PRUNING_REDIS_URL"], held_settings.key_prefix)
            listed = store.expired_artifacts
            uploaded = []

            async def listed_then_uploaded(cutoff, limit=500, start=0):
                pairs = await listed(cutoff, limit, start)
                if ("alpha", artifact.id) in pairs and not uploaded:
                    # the same bytes uploaded again after the retention listed their record
                    uploaded.append(await asyncio.to_thread(alpha.upload_dataset, path))
                return pairs

            store.expired_artifacts = listed_then_uploaded
            try:
                counts = await enforce_retention(store, blobs, held_settings)
            finally:
                await store.redis.aclose()
            return uploaded, counts

        uploaded, counts = asyncio.run(retention())
        assert [a.id for a in uploaded] == [artifact.id]
        assert counts["records"] == 0 and counts["blobs"] == 0  # the record listed was kept
        assert blobs.exists(artifact.id)
        assert alpha.upload_dataset(path).id == artifact.id  # still held: its record stands
        client = redis.Redis.from_url(env["PRUNING_REDIS_URL"])
        score = client.zscore(f"{held_settings.key_prefix}:artifacts-by-time", f"{artifact.id}:alpha")
        assert score > time.time() - 60


def test_records_inspected_by_other_code_or_shared_from_before_are_read_again(tenants, held_settings, env, tmp_path):
    import json

    import models

    client = redis.Redis.from_url(env["PRUNING_REDIS_URL"])
    prefix = held_settings.key_prefix
    key = (("x-api-key", "key-a"),)
    with Client(tenants.target, api_key="key-a") as alpha:
        path = models.dataset(tmp_path / "other.npz", seed=22)
        data = path.read_bytes()
        artifact = alpha.upload_dataset(path)
        record = f"{prefix}:artifact:alpha:{artifact.id}"
        info = json.loads(client.hget(record, "info"))
        client.hset(record, "info", json.dumps({**info, "inspection": "older-code"}))
        garbage = [pb.UploadRequest(chunk=b"\0" * len(data))]
        with pytest.raises(grpc.RpcError) as error:  # read, so the garbage is refused
            _announced(alpha.stub.UploadDataset, "d.npz", data, garbage, key)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        alpha.upload_dataset(path)  # read and inspected again: held from now on
        assert json.loads(client.hget(record, "info"))["inspection"] != "older-code"
        assert _announced(alpha.stub.UploadDataset, "d.npz", data, garbage, key).id == artifact.id

        # a shared record from before per-tenant records (its bytes counted by no tenant)
        shared = models.dataset(tmp_path / "shared.npz", seed=23)
        shared_data = shared.read_bytes()
        legacy = alpha.upload_dataset(shared)
        fields = client.hgetall(f"{prefix}:artifact:alpha:{legacy.id}")
        client.delete(f"{prefix}:artifact:alpha:{legacy.id}")
        client.hset(f"{prefix}:artifact:{legacy.id}", mapping=fields)
        try:
            with pytest.raises(grpc.RpcError) as error:
                _announced(alpha.stub.UploadDataset, "d.npz", shared_data, garbage, key)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            client.delete(f"{prefix}:artifact:{legacy.id}")


def test_a_file_changed_after_it_was_hashed_is_an_integrity_error(tenants, tmp_path, monkeypatch):
    import models
    from pruning_client import IntegrityError
    from pruning_client.client import _Upload

    path = models.dataset(tmp_path / "changing.npz", seed=24)
    hash_file = _Upload.hash

    def hash_then_change(upload):
        hash_file(upload)
        content = bytearray(path.read_bytes())
        content[-1] ^= 0xFF  # the same size, other bytes
        path.write_bytes(bytes(content))

    monkeypatch.setattr(_Upload, "hash", hash_then_change)
    with Client(tenants.target, api_key="key-a") as alpha:
        with pytest.raises(IntegrityError, match="changed while it was uploaded"):
            alpha.upload_dataset(path)


def test_a_record_created_at_the_very_cutoff_ends_the_retention_pass(
    tenants, held_settings, env, tmp_path, monkeypatch
):
    import models
    from pruning_core.objectstore import open_store
    from pruning_core.store import AsyncJobStore
    from pruning_server import reaper

    with Client(tenants.target, api_key="key-a") as alpha:
        artifact = alpha.upload_dataset(models.dataset(tmp_path / "edge.npz", seed=25))
    _age(env, held_settings, "alpha", artifact.id, 0)
    created = float(
        redis.Redis.from_url(env["PRUNING_REDIS_URL"]).hget(
            f"{held_settings.key_prefix}:artifact:alpha:{artifact.id}", "created"
        )
    )
    monkeypatch.setattr(reaper.time, "time", lambda: created + held_settings.artifact_retention_s)

    async def retention():
        store = AsyncJobStore.from_url(env["PRUNING_REDIS_URL"], held_settings.key_prefix)
        try:
            return await asyncio.wait_for(reaper.enforce_retention(store, open_store(held_settings), held_settings), 20)
        finally:
            await store.redis.aclose()

    asyncio.run(retention())  # a pass that keeps listing the record it keeps never ends
    # the records of the tests before went (created before the cutoff); this one stays
    assert redis.Redis.from_url(env["PRUNING_REDIS_URL"]).exists(
        f"{held_settings.key_prefix}:artifact:alpha:{artifact.id}"
    )


def test_limits_changed_since_are_applied_to_held_content(tenants, held_settings, env, tmp_path):
    import models

    small = models.dataset(tmp_path / "small.npz", seed=26)
    big = models.dataset(tmp_path / "big.npz", n_train=8000, seed=27)
    assert small.stat().st_size < (1 << 20) < big.stat().st_size
    with Client(tenants.target, api_key="key-a") as alpha:
        alpha.upload_dataset(small)
        alpha.upload_dataset(big)
    stricter = ServerThread(held_settings.model_copy(update={"max_upload_bytes": 1 << 20}))
    key = (("x-api-key", "key-a"),)
    try:
        with Client(stricter.target, api_key="key-a") as alpha:
            data = small.read_bytes()
            garbage = [pb.UploadRequest(chunk=b"\0" * len(data))]
            with pytest.raises(grpc.RpcError) as error:  # passed other limits: read and checked again
                _announced(alpha.stub.UploadDataset, "d.npz", data, garbage, key)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as error:  # over today's upload limit
                _announced(alpha.stub.UploadDataset, "d.npz", big.read_bytes(), [], key)
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stricter.stop()


def test_a_file_changed_in_size_or_under_the_async_client_is_an_integrity_error(tenants, tmp_path, monkeypatch):
    import models
    from pruning_client import IntegrityError
    from pruning_client.aio import AsyncClient
    from pruning_client.client import _Upload

    path = models.dataset(tmp_path / "growing.npz", seed=28)
    hash_file = _Upload.hash

    def hash_then_grow(upload):
        hash_file(upload)
        with open(path, "ab") as f:
            f.write(b"more")

    monkeypatch.setattr(_Upload, "hash", hash_then_grow)
    with Client(tenants.target, api_key="key-a") as alpha:
        with pytest.raises(IntegrityError, match="changed while it was uploaded"):
            alpha.upload_dataset(path)

    async def main():
        async with AsyncClient(tenants.target, api_key="key-a") as alpha:
            await alpha.upload_dataset(path)

    with pytest.raises(IntegrityError, match="changed while it was uploaded"):
        asyncio.run(main())


def test_a_held_or_refused_header_costs_no_file_and_no_threads(tenants, held_settings, files):
    def pipelines() -> int:  # the server runs in this process (ServerThread)
        return sum(t.name.startswith("write-pipeline-") for t in threading.enumerate())

    data = files["data"].read_bytes()
    key = (("x-api-key", "key-a"),)
    with Client(tenants.target, api_key="key-a") as alpha:
        alpha.upload_dataset(files["data"])
        started = []
        real = threading.Thread.start

        def counting_start(self):  # type: ignore[no-untyped-def]
            started.append(self.name)
            return real(self)

        threading.Thread.start = counting_start  # type: ignore[method-assign]
        try:
            assert _announced(alpha.stub.UploadDataset, "d.npz", data, [], key).id
            with pytest.raises(grpc.RpcError):  # over the limit: refused at its header
                _announced(alpha.stub.UploadDataset, "d.npz", b"x" * (129 << 20), [], key)
        finally:
            threading.Thread.start = real  # type: ignore[method-assign]
        assert not [name for name in started if name.startswith("write-pipeline-")]
    assert pipelines() == 0
    assert list((held_settings.artifacts_path / "tmp").glob("upload-*")) == []


def test_content_held_as_another_kind_is_refused_and_keeps_its_record(tenants, files, tmp_path):
    """A file valid as both a .keras model and an .npz dataset (both are zip archives)."""
    import io
    import shutil
    import zipfile

    import numpy as np

    from pruning_client import FailedPrecondition

    both = tmp_path / "both.keras"
    shutil.copy(files["keras"], both)
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((64, 28, 28), dtype=np.float32), "y_train": rng.integers(0, 10, 64)}
    arrays |= {"x_test": rng.random((16, 28, 28), dtype=np.float32), "y_test": rng.integers(0, 10, 16)}
    with zipfile.ZipFile(both, "a") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    with Client(tenants.target, api_key="key-a") as alpha:
        dataset = alpha.upload_dataset(both)
        for hash_first in (True, False):
            alpha.options.hash_first = hash_first
            with pytest.raises(FailedPrecondition, match="is held as a dataset") as refused:
                alpha.upload_model(both)
            assert dataset.id in refused.value.details
        listed = {a.id: a.kind for a in alpha.list_artifacts()}
        assert listed[dataset.id] == pb.ARTIFACT_KIND_DATASET
        assert alpha.upload_dataset(both).id == dataset.id  # as its own kind: held
        alpha.delete_artifact(dataset.id)
        model = alpha.upload_model(both)
        assert model.id == dataset.id and model.kind == pb.ARTIFACT_KIND_MODEL
        alpha.delete_artifact(model.id)


def test_an_export_uploaded_as_a_model_becomes_one(tenants, held_settings, env, files):
    """A job's pruned model, downloaded and uploaded to be pruned again."""
    from pruning_core.store import ArtifactRecord, JobStore

    content = files["keras"].read_bytes()
    export_id = hashlib.sha256(content).hexdigest()
    store = JobStore(redis.Redis.from_url(env["PRUNING_REDIS_URL"]), held_settings.key_prefix)
    store.put_artifact(
        "alpha",
        ArtifactRecord(export_id, pb.ARTIFACT_KIND_EXPORT, "keras", "p.keras", len(content), 1.0, {}, "c" * 24),
    )
    with Client(tenants.target, api_key="key-a") as alpha:
        assert {a.id: a.job_id for a in alpha.list_artifacts()}[export_id] == "c" * 24
        model = alpha.upload_model(files["keras"])
        assert model.id == export_id and model.kind == pb.ARTIFACT_KIND_MODEL and not model.job_id
        listed = {a.id: a for a in alpha.list_artifacts(kind="model")}
        assert listed[export_id].kind == pb.ARTIFACT_KIND_MODEL and not listed[export_id].job_id
        alpha.delete_artifact(export_id)


def test_stored_bytes_cut_behind_the_service_s_back_are_stored_again_by_an_upload(tenants, files):
    """The record is there, but the file is not what was stored (truncated on disk): an upload
    of the content is read and stored again instead of answered after its header."""
    data = files["data"].read_bytes()
    with Client(tenants.target, api_key="key-a") as alpha:
        first = alpha.upload_dataset(files["data"])
        stored = tenants.settings.artifacts_path / first.id[:2] / first.id
        os.truncate(stored, 1000)
        garbage = [pb.UploadRequest(chunk=b"\0" * len(data))]  # read on, these fail the announced sha256
        with pytest.raises(grpc.RpcError) as refused:
            _announced(alpha.stub.UploadDataset, "d.npz", data, garbage, (("x-api-key", "key-a"),))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert alpha.upload_dataset(files["data"]).id == first.id
        assert stored.read_bytes() == data
        alpha.delete_artifact(first.id)
