"""Nothing is held or left forever: an idle upload is dropped, and what a killed server or a
killed worker leaves behind is removed by the next start."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time

import grpc
import pytest
from hostile import ServerProcess, hostile_server, keras_bytes

from conftest import ServerThread, settings_for, start_worker, stop_worker, training_job, wait_for
from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_client import Client

pytestmark = pytest.mark.integration
KEY = (("x-api-key", "key-a"),)


def _uploads(artifacts) -> list:
    return sorted((artifacts / "tmp").glob("upload-*"))


def test_idle_upload_is_dropped(env, tmp_path):
    server = hostile_server(env, "idle", artifact_dir=str(tmp_path / "artifacts"), upload_idle_timeout_s=2)
    try:

        async def scenario() -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(server.target) as channel:
                call = pb_grpc.PruningServiceStub(channel).UploadModel(metadata=KEY)
                await call.write(pb.UploadRequest(header=pb.UploadHeader(filename="m.keras")))
                await call.write(pb.UploadRequest(chunk=keras_bytes()[:100]))
                held = time.monotonic() + 1.5
                while not _uploads(tmp_path / "artifacts") and time.monotonic() < held:
                    await asyncio.sleep(0.02)
                assert len(_uploads(tmp_path / "artifacts")) == 1  # held while it is being written
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await asyncio.wait_for(call, 30)  # then nothing more is sent
                return error.value.code()

        assert asyncio.run(scenario()) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _uploads(tmp_path / "artifacts") == []
        with Client(server.target, api_key="key-a") as client:  # its slot came back
            path = tmp_path / "m.keras"
            path.write_bytes(keras_bytes())
            assert len(client.upload_model(path).id) == 64
    finally:
        server.stop()


def test_an_upload_kept_alive_by_empty_messages_is_dropped(env, tmp_path):
    """Empty chunks (and chunk fields left empty) every second reset the idle clock: an upload
    sending no byte held its slot for as long as its client liked. Idle is now no byte."""
    server = hostile_server(env, "idle-empty", artifact_dir=str(tmp_path / "artifacts"), upload_idle_timeout_s=2)
    try:

        async def scenario() -> tuple[grpc.StatusCode, str, float]:
            async with grpc.aio.insecure_channel(server.target) as channel:
                call = pb_grpc.PruningServiceStub(channel).UploadModel(metadata=KEY)
                await call.write(pb.UploadRequest(header=pb.UploadHeader(filename="m.keras")))
                await call.write(pb.UploadRequest(chunk=keras_bytes()[:100]))
                started = time.monotonic()

                async def keep_alive() -> None:
                    with contextlib.suppress(Exception):
                        while True:
                            await call.write(pb.UploadRequest(chunk=b""))
                            await asyncio.sleep(0.5)

                alive = asyncio.ensure_future(keep_alive())
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await asyncio.wait_for(call, 30)
                alive.cancel()
                return error.value.code(), error.value.details(), time.monotonic() - started

        code, details, after = asyncio.run(scenario())
        # The server's answer; a client still writing as the server ends the call may fail its
        # write first, and gRPC's client then takes INTERNAL for the call's status ("Internal error
        # from Core", or a reset stream) before the server's DEADLINE_EXCEEDED reaches it.
        reset = code == grpc.StatusCode.INTERNAL and ("Internal error from Core" in details or "RST_STREAM" in details)
        assert reset or (code == grpc.StatusCode.DEADLINE_EXCEEDED and "no bytes for 2 s" in details), (code, details)
        assert after < 10  # two seconds of no bytes, however many empty messages came
        assert _uploads(tmp_path / "artifacts") == []
    finally:
        server.stop()


def test_an_upload_a_slow_disk_holds_back_is_not_dropped_as_idle(env, tmp_path, monkeypatch):
    """The idle clock counts the client's silence only: a full pipeline (a disk or store slower
    than the idle timeout) is the server's wait. Stamped before the write, it dropped a healthy
    upload whose next message was already there."""
    from pruning_core.transfer import WritePipeline
    from pruning_server import service

    class SlowDisk(WritePipeline):
        def __init__(self, sinks, depth=8, max_bytes=None):
            super().__init__([*sinks, lambda data: time.sleep(0.7)], 1, max_bytes)

    monkeypatch.setattr(service, "WritePipeline", SlowDisk)
    server = hostile_server(env, "idle-slow", artifact_dir=str(tmp_path / "artifacts"), upload_idle_timeout_s=0.5)
    try:
        data = keras_bytes()
        step = -(-len(data) // 5)

        def requests():
            yield pb.UploadRequest(header=pb.UploadHeader(filename="m.keras", size=len(data)))
            for i in range(0, len(data), step):
                yield pb.UploadRequest(chunk=data[i : i + step])

        with grpc.insecure_channel(server.target) as channel:
            stored = pb_grpc.PruningServiceStub(channel).UploadModel(requests(), metadata=KEY, timeout=60)
        assert stored.size == len(data)
    finally:
        server.stop()


def test_server_killed_mid_upload_leaves_nothing_after_restart(env, tmp_path):
    artifacts = tmp_path / "artifacts"
    overrides = {"PRUNING_ARTIFACT_DIR": str(artifacts), "PRUNING_SWEEP_MIN_AGE_S": "0"}
    hold = threading.Event()
    with ServerProcess(env, tmp_path, "killed-upload", **overrides) as first:

        def requests():
            yield pb.UploadRequest(header=pb.UploadHeader(filename="m.keras"))
            yield pb.UploadRequest(chunk=keras_bytes()[:100])
            hold.wait(60)

        def upload():
            with grpc.insecure_channel(first.target) as channel, pytest.raises(grpc.RpcError):
                pb_grpc.PruningServiceStub(channel).UploadModel(requests(), metadata=KEY, timeout=60)

        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        wait_for(lambda: len(_uploads(artifacts)) == 1, 60, "the upload's temp file", 0.05)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
        hold.set()
        thread.join(30)
    leftover = _uploads(artifacts)
    assert len(leftover) == 1  # the killed server could not clean up
    with ServerProcess(env, tmp_path, "killed-upload", **overrides):
        assert _uploads(artifacts) == []


def test_sweep_leaves_a_live_upload_alone(env, tmp_path):
    """The sweep of a second server sharing the artifact directory spares uploads in flight."""
    artifacts = tmp_path / "artifacts"
    first = hostile_server(env, "live", artifact_dir=str(artifacts), sweep_min_age_s=0)
    try:
        from pruning_core.blobs import BlobStore

        live = BlobStore(artifacts).writer()
        live.write(b"partial")
        second = hostile_server(env, "live", artifact_dir=str(artifacts), sweep_min_age_s=0)
        second.stop()
        assert live.path.exists()
        live.discard()
    finally:
        first.stop()


def test_worker_killed_mid_job_leaves_nothing_after_restart(env, files, tmp_path):
    work = tmp_path / "work"
    lossy = {
        **env,
        "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-workdirs",
        "PRUNING_HEARTBEAT_INTERVAL_S": "0.5",
        "PRUNING_WORK_DIR": str(work),
        "PRUNING_SWEEP_MIN_AGE_S": "0",
    }
    server = ServerThread(settings_for(lossy, reap_after_s=4))
    first = start_worker(lossy, tmp_path / "first.log")
    second = None
    try:
        with Client(server.target) as client:
            job = training_job(client, files, epochs=1)
            wait_for(lambda: job.status().progress.step > 0, 120, "training to start", 0.05)
            (orphan,) = work.glob("job-*")
            first.send_signal(signal.SIGKILL)
            first.wait()
            assert orphan.exists()  # the killed worker could not clean up
            second = start_worker(lossy, tmp_path / "second.log")
            job.result(timeout=300)
        assert not orphan.exists()
        assert list(work.glob("job-*")) == []  # the new attempt's directory went in its finally
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_worker(proc)
        server.stop()


@pytest.fixture()
def small_disk(tmp_path):
    """An 8 MiB tmpfs (needs root; skipped where mounting is not allowed)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_upload_to_a_full_disk_is_resource_exhausted_and_leaves_nothing(env, tmp_path, small_disk):
    import numpy as np

    from pruning_client import ResourceExhausted

    server = hostile_server(env, "full", artifact_dir=str(small_disk / "artifacts"))
    try:
        big = tmp_path / "big.npz"
        rng = np.random.default_rng(0)
        np.savez(big, x_train=rng.random((3000, 28, 28), "float32"), y_train=np.zeros(3000, "int64"),
                 x_test=rng.random((10, 28, 28), "float32"), y_test=np.zeros(10, "int64"))  # fmt: skip
        with Client(server.target, api_key="key-a") as client:
            with pytest.raises(ResourceExhausted, match="storage is full"):
                client.upload_dataset(big)
            assert _uploads(small_disk / "artifacts") == []  # the partial file went
            small = tmp_path / "small.npz"
            np.savez(small, x_train=np.zeros((8, 4), "float32"), y_train=np.zeros(8, "int64"),
                     x_test=np.zeros((2, 4), "float32"), y_test=np.zeros(2, "int64"))  # fmt: skip
            assert client.upload_dataset(small).id  # the server goes on, space freed
    finally:
        server.stop()


def test_a_job_failing_on_a_full_disk_says_so():
    import errno

    from pruning_worker.runner import failure

    error = failure(OSError(errno.ENOSPC, "No space left on device", "/var/work/job-1/pruned.keras"))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert (
        error.message == "a disk the worker writes to is full (<path>/job-1): No space left on device"
    )  # no server paths
    import tensorflow as tf

    wrapped = tf.errors.ResourceExhaustedError(None, None, "ckpt.data-00000-of-00001; No space left on device")
    assert failure(wrapped).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]  # TensorFlow's own
    assert failure(OSError(errno.ENOSPC, "No space left on device", b"/w/x")).message.endswith(
        "No space left on device"
    )
    other = failure(ValueError("boom"))
    assert other.code == grpc.StatusCode.INTERNAL.value[0] and other.message == "ValueError: boom"
