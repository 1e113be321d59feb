# ruff: noqa: F811 - the fixtures imported from s3_fixtures are arguments here
"""Artifacts in a real S3 server (SeaweedFS started here, on free ports), and two worker
"hosts": the server and each worker have their own state directory, cache and work directory,
and share no path, only Redis and the bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import tempfile
import threading
import time
import uuid
import zlib

import grpc
import numpy as np
import obstore
import pytest
from relay import CuttingRelay
from s3_fixtures import cached, own_store, s3_env, seaweed  # noqa: F401 - fixtures

from conftest import (
    ServerThread,
    fine_tuning,
    settings_for,
    start_worker,
    stop_worker,
    training_job,
    wait_for,
)
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, DataLoss, ResourceExhausted, constant_sparsity, job_spec
from pruning_core.objectstore import (
    checkpoint_prefix,
    checkpoint_record,
    drop_superseded_checkpoints,
    write_checkpoint_record,
)

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.fixture(scope="module")
def s3_server(s3_env):
    server = ServerThread(settings_for(s3_env))
    yield server
    server.stop()


def _host_env(s3_env: dict, root: pathlib.Path) -> dict:
    return {
        **s3_env,
        "PRUNING_STATE_DIR": str(root / "state"),
        "PRUNING_WORK_DIR": str(root / "work"),
        "PRUNING_CACHE_DIR": str(root / "cache"),
    }


@pytest.fixture(scope="module")
def hosts(s3_env, tmp_path_factory):
    """Two workers, each on its own "host" (directories of its own)."""
    roots = [tmp_path_factory.mktemp(f"worker-host-{i}") for i in range(2)]
    procs = []
    try:
        for root in roots:
            procs.append(start_worker(_host_env(s3_env, root), root / "worker.log"))
        yield list(zip(roots, procs, strict=True))
    finally:
        for proc in procs:
            stop_worker(proc)


@pytest.fixture()
def s3_client(s3_server):
    with Client(s3_server.target, timeout=60) as c:
        yield c


def _objects(seaweed, s3_env) -> list[str]:
    store = seaweed.object_store(prefix=s3_env["PRUNING_S3_PREFIX"])
    return sorted(meta["path"] for page in obstore.list(store) for meta in page)


def _spool(s3_env) -> list[pathlib.Path]:
    return list(settings_for(s3_env).artifacts_path.joinpath("tmp").glob("upload-*"))


@pytest.mark.parametrize("hash_first", [True, False])  # to the final key / to a temporary one, then renamed
def test_upload_lands_in_s3_under_its_sha256_and_nowhere_on_the_server(
    s3_server, seaweed, s3_env, tmp_path, hash_first
):
    import models

    data = models.dataset(tmp_path / "data.npz", seed=10 + hash_first)  # content new to the bucket
    with Client(s3_server.target, timeout=60, hash_first=hash_first) as client:
        artifact = client.upload_dataset(data)
    assert artifact.id == hashlib.sha256(data.read_bytes()).hexdigest()
    assert artifact.HasField("crc32") and artifact.crc32 == zlib.crc32(data.read_bytes())  # recorded beside it
    assert artifact.id in _objects(seaweed, s3_env)
    store = seaweed.object_store(prefix=s3_env["PRUNING_S3_PREFIX"])
    assert bytes(obstore.get(store, artifact.id).bytes()) == data.read_bytes()
    server_dir = settings_for(s3_env).artifacts_path
    assert [p for p in server_dir.rglob("*") if p.is_file()] == []
    assert seaweed.pending_uploads() == [] and not [k for k in _objects(seaweed, s3_env) if k.startswith("tmp/")]


@pytest.mark.parametrize("hash_first", [True, False])
def test_bytes_already_in_the_bucket_are_written_again(s3_server, seaweed, s3_env, tmp_path, hash_first):
    """A record deleted, then the same bytes uploaded again: the object is written anew (a
    fresh Last-Modified), so the housekeeping, which may be taking it as unowned, leaves it."""
    import models

    data = models.dataset(tmp_path / "again.npz", seed=12 + hash_first)
    store = seaweed.object_store(prefix=s3_env["PRUNING_S3_PREFIX"])
    with Client(s3_server.target, timeout=60, hash_first=hash_first) as client:
        artifact = client.upload_dataset(data)
        before = obstore.head(store, artifact.id)["last_modified"]
        client.delete_artifact(artifact.id)
        time.sleep(1.1)  # Last-Modified counts whole seconds
        assert client.upload_dataset(data).id == artifact.id
    assert obstore.head(store, artifact.id)["last_modified"] > before
    assert not [k for k in _objects(seaweed, s3_env) if k.startswith("tmp/")]


def test_announced_sha256_is_verified_before_anything_is_readable(s3_client, seaweed, s3_env, tmp_path):
    data = os.urandom(12 * MiB)  # more than a part: a multipart upload to the final key
    sha = hashlib.sha256(data).hexdigest()
    chunks = [data[i : i + MiB] for i in range(0, len(data), MiB)]

    def upload(announced: str):
        header = pb.UploadRequest(header=pb.UploadHeader(filename="d.npz", size=len(data), sha256=announced))
        return s3_client.stub.UploadDataset(iter([header, *(pb.UploadRequest(chunk=c) for c in chunks)]))

    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(grpc.RpcError) as error:
        upload(wrong)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong not in _objects(seaweed, s3_env) and sha not in _objects(seaweed, s3_env)
    wait_for(lambda: seaweed.pending_uploads() == [])
    assert _spool(s3_env) == []


def test_full_job_on_s3(s3_client, hosts, seaweed, s3_env, files, tmp_path):
    import models

    model = s3_client.upload_model(files["keras"])
    data = s3_client.upload_dataset(files["data"])
    spec = job_spec(
        model.id, dataset=data.id, schedule=constant_sparsity(0.5, frequency=5), epochs=2, batch_size=64,
        validation_split=0.1, seed=3, exports=("keras", "h5"),
    )  # fmt: skip
    job = s3_client.submit(spec)
    result = job.result(timeout=300)
    assert {"keras", "h5"} <= set(result.artifact_ids)
    assert set(result.artifact_ids.values()) <= set(_objects(seaweed, s3_env))  # written straight to S3
    path = job.download(tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == result.artifact_ids["keras"]
    export = s3_client.get_artifact(result.artifact_ids["keras"])  # the worker recorded its CRC-32 too
    assert export.HasField("crc32") and export.crc32 == zlib.crc32(path.read_bytes())
    assert models.weights_sparsity(path)["hidden"] == pytest.approx(0.5, abs=0.02)


def test_download_resumes_with_a_ranged_read(s3_client, files, tmp_path):
    artifact = s3_client.upload_dataset(files["big_data"])
    whole = files["big_data"].read_bytes()
    offset = len(whole) // 3 + 7
    request = pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=offset)
    chunks = list(s3_client.stub.DownloadArtifact(request))
    assert chunks[0].offset == offset and chunks[0].total_size == len(whole)
    assert {c.crc32 for c in chunks} == {zlib.crc32(whole)}  # the whole artifact's, on every chunk
    assert [c.offset for c in chunks] == [offset + sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
    assert b"".join(c.data for c in chunks) == whole[offset:]

    dest = tmp_path / "data.npz"
    (tmp_path / f"data.npz.{artifact.id[:16]}.part").write_bytes(whole[:offset])
    assert s3_client.download(artifact.id, dest).read_bytes() == whole
    end = pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=len(whole))
    assert b"".join(c.data for c in s3_client.stub.DownloadArtifact(end)) == b""
    with pytest.raises(grpc.RpcError) as error:
        list(
            s3_client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=len(whole) + 1))
        )
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_over_limit_upload_is_refused_and_leaves_nothing(s3_client, seaweed, s3_env, tmp_path):
    before = _objects(seaweed, s3_env)
    path = tmp_path / "huge.npz"
    path.write_bytes(os.urandom(int(s3_env["PRUNING_MAX_UPLOAD_BYTES"]) + 1))
    with pytest.raises(ResourceExhausted):
        s3_client.upload_dataset(path)  # the header announces the size: refused at once
    assert _objects(seaweed, s3_env) == before

    def unannounced():  # refused only when the bytes pass the limit, with parts already in S3
        yield pb.UploadRequest(header=pb.UploadHeader(filename="huge.npz"))
        for _ in range(int(s3_env["PRUNING_MAX_UPLOAD_BYTES"]) // MiB + 1):
            yield pb.UploadRequest(chunk=os.urandom(MiB))

    with pytest.raises(grpc.RpcError) as error:
        s3_client.stub.UploadDataset(unannounced())
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _objects(seaweed, s3_env) == before
    wait_for(lambda: seaweed.pending_uploads() == [])
    assert _spool(s3_env) == []


def test_dropped_upload_is_aborted_and_cleaned_up(s3_client, seaweed, s3_env):
    before = _objects(seaweed, s3_env)
    sent = threading.Event()
    release = threading.Event()

    def requests():
        yield pb.UploadRequest(header=pb.UploadHeader(filename="d.npz"))
        for _ in range(12):  # 12 MiB: two 5 MiB parts are already in S3
            yield pb.UploadRequest(chunk=os.urandom(MiB))
        sent.set()
        release.wait(30)

    call = s3_client.stub.UploadDataset.future(requests())
    assert sent.wait(30)
    wait_for(lambda: len(_spool(s3_env)) == 1)  # the server is receiving it
    wait_for(lambda: len(seaweed.pending_uploads()) == 1)  # and streaming it into a multipart upload
    call.cancel()  # the client goes away
    release.set()
    wait_for(lambda: seaweed.pending_uploads() == [] and _spool(s3_env) == [])
    assert _objects(seaweed, s3_env) == before


def test_two_hosts_without_a_shared_path_both_run_jobs(s3_client, hosts, seaweed, s3_env, files):
    model = s3_client.upload_model(files["keras"])
    data = s3_client.upload_dataset(files["data"])
    spec = job_spec(model.id, dataset=data.id, schedule=constant_sparsity(0.5, frequency=5), epochs=1, batch_size=64)
    jobs = [s3_client.submit(spec, labels={"n": str(i)}) for i in range(4)]
    for job in jobs:
        assert job.result(timeout=300).artifact_ids["keras"] in _objects(seaweed, s3_env)

    ran_on = []
    for root, proc in hosts:
        log = pathlib.Path(proc.log_path).read_text()
        ran_on.append({job.id for job in jobs if f"job {job.id}: attempt 1 started" in log})
        cached = {p.name for p in (root / "cache").rglob("*") if p.is_file()}
        assert {model.id, data.id} <= cached  # each host fetched the inputs into its own cache
        assert log.count(f"fetched artifact {model.id}") == 1  # once per host, whatever the job count
    assert ran_on[0] and ran_on[1] and ran_on[0] | ran_on[1] == {job.id for job in jobs}
    paths = [pathlib.Path(s3_env["PRUNING_STATE_DIR"]), *(root for root, _ in hosts)]
    assert not any(a != b and (a in b.parents or b in a.parents) for a in paths for b in paths)


def test_input_cache_fetches_once_verifies_and_keeps_its_bound(seaweed, s3_env, tmp_path):
    from pruning_core.objectstore import open_store
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    blobs = _stored_blobs(store, tmp_path, 3)
    cache = InputCache(store, tmp_path / "cache", max_bytes=2 * MiB + 10)
    first = cache.path(blobs[0])
    assert hashlib.sha256(first.read_bytes()).hexdigest() == blobs[0]
    assert cache.path(blobs[0]) == first and cache.fetched == 1  # a hit fetches nothing
    cache.release()  # the job ended: eviction may take its files
    cache.path(blobs[1])
    cache.release()
    ok = first.with_name(f".{first.name}.ok")
    os.utime(ok, (time.time() + 5, time.time() + 5))  # blob 0 used last: blob 1 goes first
    cache.path(blobs[2])
    assert cached(tmp_path / "cache") == {blobs[0], blobs[2]} and cache.fetched == 3
    assert cache.path(blobs[1], keep=(blobs[2],)).exists()  # blob 0 evicted, never the kept one
    assert cached(tmp_path / "cache") == {blobs[1], blobs[2]}


def test_inputs_held_past_the_bound_go_when_their_job_lets_them_go(seaweed, s3_env, tmp_path):
    """Two jobs on one host held more than the bound: once they end, the cache is back within
    it, not only at the host's next fetch (an idle host kept them for good)."""
    from pruning_core.objectstore import open_store
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    blobs = _stored_blobs(store, tmp_path, 2)
    first, second = (InputCache(store, tmp_path / "cache", max_bytes=MiB + 10) for _ in range(2))
    first.path(blobs[0])
    second.path(blobs[1])  # the first job holds blob 0: over the bound while it runs
    assert cached(tmp_path / "cache") == set(blobs)
    first.release()
    assert cached(tmp_path / "cache") == {blobs[1]}  # the one let go, used longest ago, went
    second.release()
    assert cached(tmp_path / "cache") == {blobs[1]}  # within the bound: kept for the next job


def _stored_blobs(store, tmp_path: pathlib.Path, count: int) -> list[str]:
    """The ids of ``count`` random blobs put in ``store``, of 1 MiB + 0, 1, ... bytes."""
    ids = []
    for i in range(count):
        path = tmp_path / f"blob{i}"
        path.write_bytes(os.urandom(MiB + i))
        ids.append(store.put_file(path)[0])
    return ids


def test_a_cached_input_changed_since_its_check_is_fetched_again(seaweed, s3_env, tmp_path):
    """Truncated, rewritten in place with other bytes of the same size, or replaced: a job
    never reads it (it failed as the user's corrupt model, or trained on other data)."""
    import stat

    from pruning_core.objectstore import open_store
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    source = tmp_path / "data.npz"
    source.write_bytes(os.urandom(MiB))
    artifact_id = store.put_file(source)[0]
    cache = InputCache(store, tmp_path / "cache", max_bytes=8 * MiB)
    path = cache.path(artifact_id)
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only
    cache.release()

    def tamper_by(how) -> None:
        path.chmod(0o644)
        how()
        fetched = cache.fetched
        assert cache.path(artifact_id) == path and cache.fetched == fetched + 1
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact_id
        cache.release()

    tamper_by(lambda: os.truncate(path, 1000))
    tamper_by(lambda: path.write_bytes(os.urandom(MiB)))  # the same size, the same file
    other = tmp_path / "other"
    other.write_bytes(os.urandom(MiB))
    tamper_by(lambda: os.replace(other, path))
    tamper_by(lambda: path.with_name(f".{path.name}.ok").unlink())  # no record of a check
    fetched = cache.fetched
    cache.path(artifact_id)  # untouched: a hit
    assert cache.fetched == fetched


def test_eviction_leaves_the_inputs_a_job_of_another_process_holds(seaweed, s3_env, tmp_path):
    """Worker processes share a host's cache: one's fetch must not remove the model another
    resolved and is about to load; a fetch that died leaves no temporary file for good."""
    import subprocess
    import sys

    from pruning_core.objectstore import open_store
    from pruning_worker import cache as cache_module
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    ids = _stored_blobs(store, tmp_path, 2)
    root = tmp_path / "cache"
    held = InputCache(store, root, max_bytes=MiB + 10).path(ids[0])
    # another process (a worker's job) holds blob 0 while this one fetches blob 1 past the bound
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import fcntl,sys,time; f=open({str(held)!r}); fcntl.flock(f, fcntl.LOCK_SH); "
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        import gc

        gc.collect()  # this process's first cache is gone: only the other process holds blob 0
        fetching = InputCache(store, root, max_bytes=MiB + 10)
        fetching.path(ids[1])
        assert cached(root) == set(ids)  # over the bound rather than pull it from under the job
    finally:
        holder.communicate("")
    fetching.release()  # evicts: blob 0, let go by the other process and used first, goes now
    assert cached(root) == {ids[1]}
    stale = root / "ab" / ".fetch-left-by-a-killed-worker"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"x" * 1000)
    fresh = root / "ab" / ".fetch-under-way"
    fresh.write_bytes(b"y")
    old = time.time() - cache_module.STALE_FETCH_S - 5
    os.utime(stale, (old, old))
    assert fetching.evict() == 0  # within the bound: only the stale temporary file goes
    assert cached(root) == {ids[1]} and not stale.exists() and fresh.exists()


def test_a_temporary_object_is_swept_only_when_clocks_an_hour_apart_agree_it_is_old(
    seaweed, s3_env, tmp_path, monkeypatch
):
    """Temporary objects (an upload completed, not yet renamed) age by the S3 server's clock:
    a sweep with no minimum age leaves one made now alone; past the floor it goes."""
    import obstore

    from pruning_core import objectstore

    store = objectstore.open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    key = store.tmp_key()
    obstore.put(store.objects, key, b"an upload being renamed")
    assert store.sweep(0.0) == 0 and obstore.head(store.objects, key)
    monkeypatch.setattr(objectstore, "TMP_OBJECT_MIN_AGE_S", 0.0)
    assert store.sweep(0.0) == 1
    with pytest.raises(FileNotFoundError):
        obstore.head(store.objects, key)


def test_a_blob_ages_by_the_stores_clock_not_the_servers(seaweed, s3_env, tmp_path, monkeypatch):
    """A server whose clock runs two minutes ahead of the S3 server's took an object written
    now for one two minutes old, past the housekeeping's 60 s: its age is now the store's
    clock (measured by writing a small object) against its Last-Modified."""
    import obstore

    from pruning_core import objectstore

    store = objectstore.open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    assert abs(store.store_clock_ahead_s()) < 5  # one host: the same clock
    artifact_id = hashlib.sha256(b"written just now").hexdigest()
    obstore.put(store.objects, store.key(artifact_id), b"written just now")
    real = time.time
    monkeypatch.setattr(objectstore.time, "time", lambda: real() + 120)
    store._clock = None  # measured again, with the clock two minutes ahead
    assert -125 < store.store_clock_ahead_s() < -115
    assert not store.remove(artifact_id, 60.0) and store.exists(artifact_id)
    monkeypatch.setattr(objectstore.time, "time", real)
    store._clock = None
    assert store.remove(artifact_id, 0.0) and not store.exists(artifact_id)


def test_the_bucket_prefix_is_marked_with_the_deployment_that_sweeps_it(seaweed, s3_env, tmp_path):
    """The marker beside the blobs names the job store whose housekeeping deletes there; a
    second deployment on the same prefix deletes nothing."""
    import asyncio

    from pruning_core import objectstore
    from pruning_core.store import AsyncJobStore
    from pruning_server import reaper

    store = objectstore.open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    assert store.read_marker() is None or store.read_marker()

    async def owns(prefix: str) -> bool:
        settings = settings_for(s3_env, key_prefix=prefix, state_dir=str(tmp_path / "state"))
        jobs = AsyncJobStore.from_url(s3_env["PRUNING_REDIS_URL"], prefix)
        try:
            return await reaper.owns_store(jobs, store, settings)
        finally:
            await jobs.redis.aclose()

    assert asyncio.run(owns(s3_env["PRUNING_KEY_PREFIX"]))  # this deployment's (marked now if it was not)
    marker = store.read_marker()
    assert marker is not None and s3_env["PRUNING_KEY_PREFIX"] in marker.decode()
    assert ".deployment" not in list(store.ids())
    assert not asyncio.run(owns(s3_env["PRUNING_KEY_PREFIX"] + ":staging"))
    assert store.read_marker() == marker


def test_a_missing_or_tampered_object_is_data_loss_for_a_job(seaweed, s3_env, tmp_path):
    from google.rpc import code_pb2

    from pruning_core.objectstore import open_store
    from pruning_worker.cache import InputCache
    from pruning_worker.errors import InputDataLoss

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    cache = InputCache(store, tmp_path / "cache", max_bytes=MiB)
    with pytest.raises(InputDataLoss, match="is missing in the artifact store") as lost:
        cache.path(hashlib.sha256(b"never uploaded").hexdigest())
    assert lost.value.code == code_pb2.DATA_LOSS
    genuine = hashlib.sha256(b"the bytes uploaded").hexdigest()
    obstore.put(store.objects, store.key(genuine), b"other bytes behind the service's back")
    with pytest.raises(InputDataLoss, match="does not match its sha256.*set aside: upload the file again"):
        cache.path(genuine)
    left = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert all(name.endswith(".lock") for name in left), left  # no file, no temporary one
    # set aside, kept for an operator: an upload of the content stores it anew
    assert not store.exists(genuine)
    aside = _set_aside_objects(store.objects, genuine)
    assert len(aside) == 1
    assert bytes(obstore.get(store.objects, aside[0]).bytes()) == b"other bytes behind the service's back"
    obstore.delete(store.objects, aside)


def test_a_worker_set_to_a_missing_bucket_sees_an_outage_not_data_loss(seaweed, s3_env, tmp_path):
    """A worker host whose bucket is wrong (a typo, not created yet) gets a 404 for every input:
    that is the store's outage (the job goes back to the queue, for a worker set right), never
    DATA_LOSS for each job it takes."""
    from pruning_core.objectstore import open_store, unavailable_errors
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state"), s3_bucket="no-such-bucket"))
    cache = InputCache(store, tmp_path / "cache", max_bytes=MiB)
    with pytest.raises(unavailable_errors(), match="NoSuchBucket|404"):
        cache.path(hashlib.sha256(b"uploaded to the right bucket").hexdigest())


def test_a_worker_set_to_a_missing_bucket_does_not_start(seaweed, s3_env, tmp_path):
    """Said in one line at start, exit 4 (as the server's), before it takes any job: such a
    worker failed or bounced every job it took while the workers set right sat idle."""
    import subprocess
    import sys

    env = {**os.environ, **_host_env(s3_env, tmp_path), "PRUNING_S3_BUCKET": "no-such-bucket"}
    command = [sys.executable, "-m", "celery", "-A", "pruning_worker.app", "worker", "--pool=solo"]
    command += ["-Q", s3_env["PRUNING_QUEUE"], "--without-gossip", "--without-mingle"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert "the worker cannot start: cannot use the artifact store (s3)" in said and "NoSuchBucket" in said
    assert "ready." not in said


def test_a_download_whose_object_is_gone_is_data_loss(s3_client, seaweed, s3_env, tmp_path):
    """The record is there, the bucket lost the bytes (deleted behind the service's back): not
    INTERNAL, and the SDK keeps no file."""
    import numpy as np

    from pruning_client import DataLoss

    source = tmp_path / "gone.npz"
    np.savez(source, x_train=np.zeros((4, 2)), y_train=np.zeros(4), x_test=np.zeros((2, 2)), y_test=np.zeros(2))
    artifact = s3_client.upload_dataset(source)
    obstore.delete(seaweed.object_store(prefix=s3_env["PRUNING_S3_PREFIX"]), artifact.id)
    with pytest.raises(grpc.RpcError) as error:
        list(s3_client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id)))
    assert error.value.code() == grpc.StatusCode.DATA_LOSS and artifact.id in error.value.details()
    with pytest.raises(DataLoss) as sdk:  # the CLI's exit 11, as a download failing its sha256
        s3_client.download(artifact.id, tmp_path / "back.npz")
    assert sdk.value.code == grpc.StatusCode.DATA_LOSS and sdk.value.exit_code == 11
    assert not list(tmp_path.glob("back.npz*"))
    s3_client.delete_artifact(artifact.id)


def test_checkpoints_travel_through_the_bucket_between_hosts(seaweed, s3_env, tmp_path):
    from pruning_core.objectstore import open_store

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    job_id = uuid.uuid4().hex[:24]
    key = f"checkpoints/{job_id}/"
    on_a, on_b = store.checkpoint_dir(job_id, tmp_path / "a"), store.checkpoint_dir(job_id, tmp_path / "b")
    assert on_a != on_b and tmp_path / "a" in on_a.parents  # in the attempt's own directory

    def write(directory: pathlib.Path, epoch: int, attempt: int = 1) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        prefix = checkpoint_prefix(attempt, epoch)
        for suffix in (".index", ".data-00000-of-00001"):
            (directory / f"{prefix}{suffix}").write_bytes(f"{epoch}{suffix}".encode())
        record = f'{{"epoch": {epoch}, "prefix": "{prefix}", "history": []}}'.encode()
        write_checkpoint_record(directory, record, attempt)
        drop_superseded_checkpoints(directory, attempt, prefix)
        store.push_checkpoint(job_id, directory, prefix, attempt)

    def kept() -> list[str]:
        return sorted(p.removeprefix(key) for p in _objects(seaweed, s3_env) if p.startswith(key))

    store.pull_checkpoint(job_id, on_b)
    assert not on_b.exists()  # nothing kept yet: nothing fetched
    write(on_a, 1)
    write(on_a, 2)
    assert kept() == ["a1-epoch-2.data-00000-of-00001", "a1-epoch-2.index", "latest-1.json"]  # epoch 1's went
    store.pull_checkpoint(job_id, on_b)
    assert {p.name: p.read_bytes() for p in on_b.iterdir()} == {p.name: p.read_bytes() for p in on_a.iterdir()}

    # attempt 2 goes on on host b; attempt 1, stale but past its ownership check, writes once more
    write(on_b, 3, attempt=2)
    assert kept() == ["a2-epoch-3.data-00000-of-00001", "a2-epoch-3.index", "latest-2.json"]
    write(on_a, 3)
    assert {"a2-epoch-3.index", "latest-2.json", "a1-epoch-3.index", "latest-1.json"} <= set(kept())
    store.drop_checkpoints(job_id, 1)  # attempt 1 clears its own: attempt 2's stay
    assert kept() == ["a2-epoch-3.data-00000-of-00001", "a2-epoch-3.index", "latest-2.json"]
    write(on_a, 4)
    on_c = store.checkpoint_dir(job_id, tmp_path / "c")
    store.pull_checkpoint(job_id, on_c)  # the next attempt resumes from attempt 2's, not the stale one's
    assert sorted(p.name for p in on_c.iterdir()) == [
        "a2-epoch-3.data-00000-of-00001",
        "a2-epoch-3.index",
        "latest-2.json",
    ]
    # a record whose files are not (or no longer) there is not fetched: no record naming nothing
    obstore.put(store.objects, store._checkpoint_key(job_id, "latest-3.json"), b'{"epoch": 5, "prefix": "a3-epoch-5"}')
    on_d = store.checkpoint_dir(job_id, tmp_path / "d")
    store.pull_checkpoint(job_id, on_d)
    assert not on_d.exists() or not list(on_d.iterdir())
    store.drop_checkpoints(job_id)
    assert not [p for p in _objects(seaweed, s3_env) if p.startswith(key)]
    with pytest.raises(ValueError):
        store.checkpoint_dir("../x", tmp_path)
    with pytest.raises(ValueError):
        store.drop_checkpoints("a/b")


def test_a_rerun_attempt_on_another_host_resumes_from_the_bucket(seaweed, s3_env, files, tmp_path):
    """A worker killed in epoch 2 of 2 on one host; the next attempt runs on another host
    (no shared path) and resumes from epoch 1's checkpoint, fetched from the bucket."""
    import signal

    from pruning_core.phases import Phase

    epochs = 2
    lossy = {**s3_env, "PRUNING_QUEUE": s3_env["PRUNING_QUEUE"] + "-resume", "PRUNING_HEARTBEAT_INTERVAL_S": "0.5"}
    server = ServerThread(settings_for(lossy, reap_after_s=4))
    first = start_worker(_host_env(lossy, tmp_path / "host-a"), tmp_path / "first.log")
    second = None
    try:
        with Client(server.target, timeout=60) as client:
            job = training_job(client, files, epochs=epochs)
            key = f"checkpoints/{job.id}/{checkpoint_record(1)}"  # the first attempt's
            wait_for(lambda: fine_tuning(job, epoch=2), 180, "epoch 2", 0.05)
            progress = job.status().progress
            wait_for(lambda: key in _objects(seaweed, s3_env))
            per_epoch = progress.total_steps // epochs
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = start_worker(_host_env(lossy, tmp_path / "host-b"), tmp_path / "second.log")
            result = job.result(timeout=300)
            final = job.status()
            events = list(client.watch_events(job.id))
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 2
        assert any(  # epoch 1's, or epoch 2's if it ended between the check and the kill
            "resuming from the checkpoint of epoch" in e.log.message for e in events if e.WhichOneof("kind") == "log"
        )
        second_run = max(
            i
            for i, e in enumerate(events)
            if e.WhichOneof("kind") == "state_change" and e.state_change.to == pb.JOB_STATE_RUNNING
        )
        steps = [
            e.progress.step
            for e in events[second_run:]
            if e.WhichOneof("kind") == "progress" and e.progress.phase == Phase.FINE_TUNE and e.progress.step
        ]
        assert steps and min(steps) > per_epoch  # epoch 1 was not run again on host b
        assert [h.epoch for h in final.result.history] == list(range(1, epochs + 1))
        assert result.pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
        assert not [p for p in _objects(seaweed, s3_env) if p.startswith(f"checkpoints/{job.id}/")]  # ended: gone
        assert not list((tmp_path / "host-b" / "work").glob("job-*"))  # host a's goes with its next job's sweep
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_worker(proc)
        server.stop()


def test_a_job_stopped_by_one_host_s_outage_runs_on_another_host(seaweed, s3_env, files, tmp_path):
    """Host a loses its network to the store after it started; its job's attempt stops and goes
    back to the queue with a countdown. Host a, waiting for its store, takes nothing, so the
    task goes to host b, which runs the job. Before, host a (idle) fetched the delayed task
    itself, and the job waited out every countdown there while host b sat idle."""
    from urllib.parse import urlsplit

    endpoint = urlsplit(s3_env["PRUNING_S3_ENDPOINT"])
    proxy = CuttingRelay((endpoint.hostname, endpoint.port))
    own = {**s3_env, "PRUNING_QUEUE": s3_env["PRUNING_QUEUE"] + "-outage"}
    server = ServerThread(settings_for(own))
    host_a = {**_host_env(own, tmp_path / "host-a"), "PRUNING_S3_ENDPOINT": f"http://127.0.0.1:{proxy.port}"}
    first = start_worker({**host_a, "PRUNING_S3_TIMEOUT_S": "5"}, tmp_path / "a.log")
    second = None
    try:
        with Client(server.target, timeout=60) as client:
            model = client.upload_model(files["keras"])
            data = client.upload_dataset(files["data"])
            proxy.cut()
            spec = job_spec(model.id, dataset=data.id, schedule=constant_sparsity(0.5, frequency=5), epochs=1)
            job = client.submit(spec)
            wait_for(lambda: "artifact store" in (tmp_path / "a.log").read_text() and "re-queued" in
                     (tmp_path / "a.log").read_text(), 120, "host a's attempt stopped by its store")  # fmt: skip
            second = start_worker(_host_env(own, tmp_path / "host-b"), tmp_path / "b.log")
            result = job.result(timeout=240)
            final = job.status()
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 2
        assert f"job {job.id}: attempt 2 started" in (tmp_path / "b.log").read_text()
        assert f"job {job.id}: attempt 2 started" not in (tmp_path / "a.log").read_text()
        assert result.artifact_ids["keras"] in _objects(seaweed, s3_env)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_worker(proc)
        server.stop()
        proxy.close()


def test_an_export_of_bytes_already_in_the_bucket_writes_them_again(seaweed, s3_env, tmp_path):
    """A job's export identical to an object no record owns (a deleted artifact's): skipped as
    already there, the housekeeping could take it right after the job's record pointed to it;
    written again it is new, and the housekeeping leaves objects written this minute."""
    from pruning_core.objectstore import open_store

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    export = tmp_path / "pruned.tflite"
    export.write_bytes(os.urandom(4096))
    artifact_id = store.put_file(export).id
    before = obstore.head(store.objects, store.key(artifact_id))["last_modified"]
    time.sleep(1.1)  # Last-Modified counts whole seconds
    assert store.put_file(export)[0] == artifact_id
    assert obstore.head(store.objects, store.key(artifact_id))["last_modified"] > before
    assert not store.remove(artifact_id, min_age_s=60.0)  # as the housekeeping asks
    obstore.delete(store.objects, store.key(artifact_id))


def test_one_fetch_of_an_id_at_a_time_on_a_host(seaweed, s3_env, tmp_path):
    """Two jobs (here two threads, each with its own cache, as two worker processes have) want
    the same input at once: one fetches, the other waits and finds it checked."""
    from concurrent.futures import ThreadPoolExecutor

    from pruning_core.objectstore import open_store
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    source = tmp_path / "data.npz"
    source.write_bytes(os.urandom(4 * MiB))
    artifact_id = store.put_file(source)[0]
    caches = [InputCache(store, tmp_path / "cache", max_bytes=64 * MiB) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda cache: cache.path(artifact_id), caches))
    assert len(set(paths)) == 1 and sum(cache.fetched for cache in caches) == 1
    assert hashlib.sha256(paths[0].read_bytes()).hexdigest() == artifact_id


def test_a_local_input_gone_from_the_store_is_data_loss(tmp_path):
    from pruning_core.objectstore import LocalStore
    from pruning_worker.cache import InputCache
    from pruning_worker.errors import InputDataLoss

    cache = InputCache(LocalStore(tmp_path / "artifacts"), tmp_path / "cache", max_bytes=MiB)
    with pytest.raises(InputDataLoss, match="is missing"):
        cache.path(hashlib.sha256(b"recorded, then removed behind the service's back").hexdigest())


def test_a_store_that_stops_answering_fails_a_call_within_its_timeout_and_retries(seaweed, s3_env, tmp_path):
    """A paused S3 (it accepts connections and never answers) held each call for 5 min; now a
    request is given PRUNING_S3_TIMEOUT_S and sent again PRUNING_S3_MAX_RETRIES times, then the
    call fails with an error the server answers UNAVAILABLE and a worker retries later."""

    from pruning_core.objectstore import open_store, unavailable_errors

    env = {**s3_env, "PRUNING_S3_TIMEOUT_S": "1.5", "PRUNING_S3_MAX_RETRIES": "1"}
    store = open_store(settings_for(env, state_dir=str(tmp_path / "state")))
    artifact_id = hashlib.sha256(b"never uploaded").hexdigest()
    assert not store.exists(artifact_id)  # answering
    seaweed.pause()
    try:
        started = time.monotonic()
        with pytest.raises(unavailable_errors()):
            store.exists(artifact_id)
        took = time.monotonic() - started
    finally:
        seaweed.resume()
    assert 2 * 1.5 <= took < 10, took  # two tries of 1.5 s (and a backoff), not minutes
    assert not store.exists(artifact_id)  # answering again


def test_an_upload_the_store_does_not_take_is_the_stores_outage_not_a_local_error(seaweed, s3_env, tmp_path):
    """obstore's multipart writer raises a bare OSError when S3 does not answer: it was taken
    for the server's own failure (INTERNAL, a traceback); it is the store's (UNAVAILABLE)."""
    from pruning_core.objectstore import StoreUnavailable, open_store, unavailable_errors

    env = {**s3_env, "PRUNING_S3_TIMEOUT_S": "1.5", "PRUNING_S3_MAX_RETRIES": "0"}
    store = open_store(settings_for(env, state_dir=str(tmp_path / "state")))
    upload = store.writer()
    upload.write(os.urandom(4096))
    seaweed.pause()
    try:
        with pytest.raises(unavailable_errors()) as raised:
            upload.commit()
    finally:
        seaweed.resume()
    assert isinstance(raised.value, StoreUnavailable) or type(raised.value) is not OSError
    assert not list(store.tmp_dir.iterdir())  # its spool went with it


_KILLED_MID_UPLOAD = """
import os, sys, time
from pruning_core.objectstore import open_store
from pruning_core.settings import Settings
upload = open_store(Settings()).writer()
upload.write(os.urandom(6 << 20))  # past one 5 MiB part: the multipart upload holds a part
print("written", flush=True)
time.sleep(600)
"""


def test_a_multipart_upload_nobody_aborted_is_aborted_by_the_housekeeping(seaweed, s3_env, tmp_path):
    """A server killed mid-upload (or one whose abort the store did not answer: obstore's
    writer then gives the upload up) leaves a multipart upload and its parts in the bucket for
    good. The housekeeping lists the multipart uploads under the prefix and aborts those older
    than s3_abort_uploads_after_s; a fresh one, and another prefix's, stay."""
    import subprocess
    import sys

    from pruning_core.objectstore import open_store

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    client = store._multipart()
    elsewhere = client.create_multipart_upload(Bucket=seaweed.bucket, Key="another-deployment/x")

    def ours() -> set[str]:
        found = client.list_multipart_uploads(Bucket=seaweed.bucket, Prefix=store.key_prefix).get("Uploads", [])
        return {u["UploadId"] for u in found}

    before = ours()
    server = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_UPLOAD],
        env={**os.environ, **s3_env, "PRUNING_STATE_DIR": str(tmp_path / "killed")},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "written"
        deadline = time.monotonic() + 30
        while not ours() - before:
            assert time.monotonic() < deadline, "the multipart upload did not start"
            time.sleep(0.2)
    finally:
        server.kill()
        server.wait()
    left = ours() - before
    assert len(left) == 1

    assert store.abort_stale_uploads(3600.0) == 0 and ours() - before == left  # not an hour old

    async def housekeeping() -> dict[str, int]:
        from pruning_core.store import AsyncJobStore
        from pruning_server import reaper

        settings = settings_for({**s3_env, "PRUNING_S3_ABORT_UPLOADS_AFTER_S": "0.001"}, state_dir=str(tmp_path / "s"))
        jobs = AsyncJobStore.from_url(settings.redis_url, settings.key_prefix)
        try:
            return await reaper.enforce_retention(jobs, store, settings)
        finally:
            await jobs.redis.aclose()

    assert asyncio.run(housekeeping())["uploads"] >= 1
    assert not ours() - before
    others = client.list_multipart_uploads(Bucket=seaweed.bucket, Prefix="another-deployment/").get("Uploads", [])
    assert [u["UploadId"] for u in others] == [elsewhere["UploadId"]]  # not under this store's prefix
    client.abort_multipart_upload(Bucket=seaweed.bucket, Key="another-deployment/x", UploadId=elsewhere["UploadId"])


def test_a_download_read_slower_than_the_s3_timeout_is_not_cut(seaweed, s3_env, tmp_path):
    """The server reads an object as fast as its client takes the bytes: a stream paused longer
    than PRUNING_S3_TIMEOUT_S between reads is a slow client, not a stalled store."""
    import asyncio

    from pruning_core.objectstore import open_store

    source = tmp_path / "slow.bin"
    source.write_bytes(os.urandom(24 * MiB))
    artifact_id, size, _ = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state"))).put_file(source)
    env = {**s3_env, "PRUNING_S3_TIMEOUT_S": "1", "PRUNING_S3_MAX_RETRIES": "0"}
    store = open_store(settings_for(env, state_dir=str(tmp_path / "state")))

    async def read_slowly() -> bytes:
        got = bytearray()
        async for data in store.read(artifact_id, chunk=4 * MiB, size=size):
            got += data
            await asyncio.sleep(1.0)  # the client takes 4 MiB a second: 6 s for the whole GET
        return bytes(got)

    started = time.monotonic()
    assert hashlib.sha256(asyncio.run(read_slowly())).hexdigest() == artifact_id
    assert time.monotonic() - started > 5  # longer than the timeout x (1 + retries)


def test_the_metrics_say_whether_the_artifact_store_answers(seaweed, s3_env, tmp_path):
    """pruning_artifact_store_up: 1 while the bucket answers, 0 within the scrape's 3 s when it
    stops (paused), 1 again after."""

    from pruning_server.telemetry import JobMetricsCollector

    collector = JobMetricsCollector(settings_for(s3_env, state_dir=str(tmp_path / "state")))

    def up() -> float:
        found = [m for m in collector.collect() if m.name == "pruning_artifact_store_up"]
        return found[0].samples[0].value

    missing = JobMetricsCollector(
        settings_for({**s3_env, "PRUNING_S3_BUCKET": "no-such-bucket"}, state_dir=str(tmp_path / "other"))
    )
    try:
        assert next(m for m in missing.collect() if m.name == "pruning_artifact_store_up").samples[0].value == 0
    finally:
        missing.close()
    try:
        assert up() == 1
        seaweed.pause()
        try:
            started = time.monotonic()
            assert up() == 0
            assert time.monotonic() - started < 8
        finally:
            seaweed.resume()
        assert up() == 1
    finally:
        collector.close()


def _set_aside_objects(objects, artifact_id: str) -> list[str]:
    """The keys under quarantine/ of the artifact's bytes set aside (a listing's prefix is
    whole path segments: ``quarantine/<id>.`` would find none)."""
    listed = (m["path"] for page in obstore.list(objects, prefix="quarantine/") for m in page)
    return [path for path in listed if path.startswith(f"quarantine/{artifact_id}.")]


def _s3_exists(objects):
    def exists(artifact_id: str) -> bool:
        try:
            obstore.head(objects, artifact_id)
        except FileNotFoundError:
            return False
        return True

    return exists


def _changed_download(client: Client, artifact: pb.Artifact, offset: int = 0) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        list(client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=offset)))
    return error.value


def _check_changed_bytes_are_data_loss(client: Client, artifact: pb.Artifact, data: bytes, put) -> None:
    """Bytes shortened or grown behind the service's back came out as OK with fewer or more
    bytes than recorded (only the SDK's sha256 saw it): DATA_LOSS, from any offset, including
    one past the shortened end (S3 answers 416 there, which read as an outage to retry)."""
    for changed, offsets in ((data[: len(data) // 2], (0, len(data) - 10)), (data + b"more", (0, 5))):
        put(changed)
        for offset in offsets:
            error = _changed_download(client, artifact, offset)
            assert error.code() == grpc.StatusCode.DATA_LOSS, (len(changed), offset, error.details())
            assert f"not the {len(data)} recorded" in error.details()
    put(data)  # as recorded again: served
    assert (
        b"".join(c.data for c in client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id)))
        == data
    )


def _check_changed_bytes_at_their_size_are_set_aside(client: Client, artifact: pb.Artifact, data: bytes, put, exists):
    """The same size, one byte changed: a whole download is checked by the server against the
    CRC-32 recorded at upload before its last chunk goes, and is DATA_LOSS, the SDK keeping
    nothing; the bytes are set aside, and uploading the file again stores it anew (it was
    answered "held" after its header, and every download failed until an operator stepped in)."""
    put(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    resumed = list(client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=200)))
    assert b"".join(c.data for c in resumed) == data[200:]  # a resumed download's client checks the whole file
    with tempfile.TemporaryDirectory() as scratch, pytest.raises(DataLoss, match="set aside: upload the file again"):
        try:
            client.download(artifact.id, pathlib.Path(scratch) / "data.npz")
        finally:
            assert list(pathlib.Path(scratch).iterdir()) == []
    assert not exists(artifact.id)
    error = _changed_download(client, artifact)
    assert error.code() == grpc.StatusCode.DATA_LOSS and "missing" in error.details()
    with tempfile.NamedTemporaryFile(suffix=".npz") as again:
        again.write(data)
        again.flush()
        assert client.upload_dataset(again.name).id == artifact.id
    with tempfile.TemporaryDirectory() as scratch:
        assert client.download(artifact.id, pathlib.Path(scratch) / "data.npz").read_bytes() == data


def _set_aside_metric(settings) -> float:
    """pruning_artifacts_set_aside as a scrape of the server's metrics reads it."""
    from pruning_server.telemetry import JobMetricsCollector

    collector = JobMetricsCollector(settings)
    try:
        return next(m for m in collector.collect() if m.name == "pruning_artifacts_set_aside").samples[0].value
    finally:
        collector.close()


def test_s3_bytes_changed_behind_the_service_are_data_loss(s3_client, seaweed, s3_env, files, tmp_path):
    objects = seaweed.object_store(prefix=s3_env["PRUNING_S3_PREFIX"])
    artifact = s3_client.upload_dataset(files["data"])
    data = files["data"].read_bytes()
    metrics = settings_for(s3_env, state_dir=str(tmp_path / "metrics"))
    before = _set_aside_metric(metrics)
    _check_changed_bytes_are_data_loss(s3_client, artifact, data, lambda b: obstore.put(objects, artifact.id, b))
    _check_changed_bytes_at_their_size_are_set_aside(
        s3_client, artifact, data, lambda b: obstore.put(objects, artifact.id, b), _s3_exists(objects)
    )
    aside = _set_aside_objects(objects, artifact.id)
    assert len(aside) == 1
    assert _set_aside_metric(metrics) == before + 1  # what an operator's alert sees
    obstore.delete(objects, aside)


def test_a_local_file_changed_behind_the_service_is_data_loss(env, files):
    settings = settings_for(env, queue=f"{env['PRUNING_QUEUE']}-changed")
    server = ServerThread(settings)
    try:
        with Client(server.target, timeout=60) as client:
            artifact = client.upload_dataset(files["data"])
            path = settings.artifacts_path / artifact.id[:2] / artifact.id
            _check_changed_bytes_are_data_loss(client, artifact, path.read_bytes(), path.write_bytes)
            _check_changed_bytes_at_their_size_are_set_aside(
                client, artifact, path.read_bytes(), path.write_bytes, lambda i: path.exists()
            )
            aside = list((settings.artifacts_path / "quarantine").iterdir())
            assert len(aside) == 1 and aside[0].name.startswith(f"{artifact.id}.")
            assert _set_aside_metric(settings) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_bytes_set_aside_go_after_their_retention(backend, seaweed, s3_env, tmp_path):
    """What the housekeeping deletes of ``quarantine/``: blobs set aside longer ago than
    set_aside_retention_s (the time their name records), none when it is 0, and nothing it did
    not name itself; the metric counts what is left."""
    from pruning_core.objectstore import QUARANTINE, open_store
    from pruning_core.store import AsyncJobStore
    from pruning_server import reaper

    overrides = {"state_dir": str(tmp_path / "state"), "sweep_min_age_s": 0}
    if backend == "local":
        overrides |= {"artifact_store": "local", "artifact_dir": str(tmp_path / "artifacts")}
    else:
        overrides |= {"s3_prefix": f"{s3_env['PRUNING_S3_PREFIX']}-aside-{uuid.uuid4().hex[:6]}"}
    store = open_store(settings_for(s3_env, **overrides))
    now_ns = time.time_ns()
    day_ns = 86400 * 10**9
    names = {
        "old": f"{'a' * 64}.{now_ns - 3 * day_ns}",
        "recent": f"{'b' * 64}.{now_ns - day_ns // 2}",
        "foreign": "notes-from-the-operator.txt",
    }
    for name in names.values():
        if backend == "local":
            (store.root / QUARANTINE).mkdir(parents=True, exist_ok=True)
            (store.root / QUARANTINE / name).write_bytes(b"changed bytes")
        else:
            obstore.put(store.objects, f"{QUARANTINE}/{name}", b"changed bytes")

    def left() -> set[str]:
        if backend == "local":
            return {p.name for p in (store.root / QUARANTINE).iterdir()}
        listed = obstore.list(store.objects, prefix=f"{QUARANTINE}/")
        return {m["path"].rsplit("/", 1)[-1] for page in listed for m in page}

    def housekeeping(retention_s: float) -> dict[str, int]:
        settings = settings_for(s3_env, **overrides, set_aside_retention_s=retention_s, artifact_retention_s=0)

        async def run() -> dict[str, int]:
            jobs = AsyncJobStore.from_url(settings.redis_url, settings.key_prefix)
            try:
                return await reaper.enforce_retention(jobs, store, settings)
            finally:
                await jobs.redis.aclose()

        return asyncio.run(run())

    assert housekeeping(0)["set_aside"] == 0 and left() == set(names.values())  # 0: kept
    assert store.set_aside() == 3
    assert housekeeping(86400.0)["set_aside"] == 1
    assert left() == {names["recent"], names["foreign"]}
    assert housekeeping(3600.0)["set_aside"] == 1
    assert left() == {names["foreign"]} and store.set_aside() == 1


def test_a_set_aside_leaves_an_object_stored_after_its_last_look(seaweed, s3_env, tmp_path, monkeypatch):
    """The changed bytes are set aside while the tenant uploads the file again: the good
    object lands after the set-aside's looks (HEAD), just before its delete reaches the store.
    The delete is conditional on the ETag read, so the good object stays and the copy goes."""
    from pruning_core import objectstore
    from pruning_core.objectstore import QUARANTINE

    store = own_store(s3_env, tmp_path, "last-look")
    good = b"the bytes as uploaded" * 1000
    artifact_id = hashlib.sha256(good).hexdigest()
    obstore.put(store.objects, artifact_id, good[:-1] + b"?")  # changed behind the service's back
    changed = objectstore._object_version(obstore.head(store.objects, artifact_id))

    # The upload lands just before the delete reaches the store, whichever call makes it
    real_delete, client = obstore.delete, store._multipart()
    real_delete_object = client.delete_object

    def upload_lands() -> None:
        obstore.put(store.objects, artifact_id, good)

    def delete(objects, keys):
        if keys == artifact_id:
            upload_lands()
        return real_delete(objects, keys)

    def delete_object(**kwargs):
        if kwargs["Key"].endswith(artifact_id):
            upload_lands()
        return real_delete_object(**kwargs)

    monkeypatch.setattr(obstore, "delete", delete)
    monkeypatch.setattr(client, "delete_object", delete_object)
    assert store.quarantine(artifact_id, changed) is None
    monkeypatch.undo()
    assert bytes(obstore.get(store.objects, artifact_id).bytes()) == good
    assert [m for page in obstore.list(store.objects, prefix=f"{QUARANTINE}/") for m in page] == []

    # the changed bytes, with nobody storing the file again: set aside
    obstore.put(store.objects, artifact_id, good[:-1] + b"?")
    changed = objectstore._object_version(obstore.head(store.objects, artifact_id))
    where = store.quarantine(artifact_id, changed)
    assert where is not None and where.startswith(f"{store.key_prefix}{QUARANTINE}/{artifact_id}.")
    assert not store.exists(artifact_id) and store.set_aside() == 1

    # a store without conditional deletes: a last look, then a plain delete
    from botocore.exceptions import ClientError

    def not_implemented(**kwargs):
        raise ClientError({"Error": {"Code": "NotImplemented", "Message": "If-Match"}}, "DeleteObject")

    monkeypatch.setattr(client, "delete_object", not_implemented)
    obstore.put(store.objects, artifact_id, good[:-1] + b"?")
    changed = objectstore._object_version(obstore.head(store.objects, artifact_id))
    assert store.quarantine(artifact_id, changed) is not None
    assert not store.exists(artifact_id) and store.set_aside() == 2


def test_a_download_from_a_bucket_gone_is_unavailable_not_data_loss(seaweed, s3_env, files, tmp_path):
    """The bucket removed while the server runs (an operator's mistake, a lifecycle gone wrong)
    answers 404 to every GET, as for one lost object: that is the store's outage, UNAVAILABLE,
    and the SDK keeps what it has to resume, not DATA_LOSS for every artifact."""
    from pruning_core.objectstore import open_store

    bucket = f"vanishing-{uuid.uuid4().hex[:6]}"
    settings = settings_for(
        s3_env, queue=f"{s3_env['PRUNING_QUEUE']}-gone", state_dir=str(tmp_path / "state"), s3_bucket=bucket
    )
    client = open_store(settings)._multipart()
    client.create_bucket(Bucket=bucket)
    server = ServerThread(settings)
    try:
        with Client(server.target, timeout=60) as sdk:
            artifact = sdk.upload_dataset(files["data"])
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=item["Key"])
            client.delete_bucket(Bucket=bucket)
            error = _changed_download(sdk, artifact)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    finally:
        server.stop()


def test_checkpoints_ask_a_store_that_stopped_answering_before_sending_again(seaweed, s3_env, tmp_path):
    """A store paused (it accepts connections and answers nothing) held each epoch's checkpoint
    sends for their whole timeout and retries, the training waiting on them epoch after epoch.
    After one send found the store not answering, the next checkpoint asks it first (a short
    probe) and is skipped while it still does not answer; once it answers, checkpoints are
    sent again."""
    import tf_keras

    from pruning_core.objectstore import open_probe, open_store
    from pruning_worker import train

    settings = settings_for(
        s3_env,
        state_dir=str(tmp_path / "state"),
        s3_prefix=f"{s3_env['PRUNING_S3_PREFIX']}-paused-{uuid.uuid4().hex[:6]}",
        s3_timeout_s=3.0,
        s3_max_retries=0,
    )
    store = open_store(settings)
    job_id = uuid.uuid4().hex[:24]
    said: list[str] = []
    checkpoints = train.Checkpoints(
        store,
        job_id,
        store.checkpoint_dir(job_id, tmp_path / "attempt"),
        said.append,
        probe=lambda: open_probe(settings, 0.5).probe(),
    )
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.zeros((4, 3)), np.zeros((4, 2)), verbose=0)

    def save(epoch: int) -> float:
        started = time.monotonic()
        checkpoints.save(model, epoch, [])
        return time.monotonic() - started

    seaweed.pause()
    try:
        first = save(1)
        second = save(2)
    finally:
        seaweed.resume()
    assert first >= 2.5, said  # the send waited for its timeout
    assert second < 2.0, (first, second, said)  # asked first, skipped at once
    assert "still does not answer" in said[-1] and "epoch 2" in said[-1]
    assert save(3) < 30 and checkpoints.latest() == {"epoch": 3, "prefix": "a0-epoch-3", "history": []}
    key = f"checkpoints/{job_id}/"
    kept = [m["path"] for page in obstore.list(store.objects, prefix=key) for m in page]
    assert sorted(p.removeprefix(key) for p in kept) == [
        "a0-epoch-3.data-00000-of-00001",
        "a0-epoch-3.index",
        "latest-0.json",
    ]
    store.drop_checkpoints(job_id)
