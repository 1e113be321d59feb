"""A server restart loses nothing: the SDK's watch reconnects and resumes, with no gap and
no duplicate, and the job goes on."""

from __future__ import annotations

import socket
import threading

import pytest

from conftest import ServerThread, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, constant_sparsity, job_spec

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_watch_survives_a_server_restart(env, worker, files):
    settings = settings_for(env, grace_s=0.5)
    port = free_port()
    first = ServerThread(settings, f"127.0.0.1:{port}")
    second = None
    try:
        with Client(f"127.0.0.1:{port}") as client:
            model = client.upload_model(files["keras"])
            data = client.upload_dataset(files["big_data"])
            job = client.submit(
                job_spec(
                    model.id,
                    dataset=data.id,
                    epochs=2,
                    batch_size=128,
                    schedule=constant_sparsity(0.5, frequency=20),
                    report=False,  # the report's tests run it
                )
            )
            seen = []
            restarted = threading.Event()
            for event in job.watch():
                seen.append(event)
                if event.WhichOneof("kind") == "progress" and event.progress.step > 0 and not restarted.is_set():
                    first.stop()
                    second = ServerThread(settings, f"127.0.0.1:{port}")
                    restarted.set()
            assert restarted.is_set()
            replay = list(client.watch_events(job.id))
        assert [e.id for e in seen] == [e.id for e in replay]
        assert seen[-1].state_change.to == pb.JOB_STATE_SUCCEEDED
    finally:
        for srv in (first, second):
            if srv is not None:
                srv.stop()


@pytest.mark.parametrize("sync", [True, False])
def test_a_download_resumes_through_a_server_restart(env, tmp_path, sync):
    """A server restarted midway through a download (README: resumed, "a server restarted")
    ended it with UNAVAILABLE instead: the first resume, 0.5 s later, found nothing listening
    yet, brought no bytes, and that ended the retries. A call that reached no server is tried
    again on the same schedule."""
    import asyncio
    import hashlib
    import time

    import models
    from pruning_client.aio import AsyncClient

    settings = settings_for(env, grace_s=0.0)
    port = free_port()
    target = f"127.0.0.1:{port}"
    servers = [ServerThread(settings, target)]
    data = models.dataset(tmp_path / "big.npz", n_train=50_000, n_test=16)  # ~13 MB: many chunks
    stopped = threading.Event()

    def restart() -> None:
        servers[0].stop()
        stopped.set()
        time.sleep(1.0)  # a restarting server: nothing listens for a moment
        servers.append(ServerThread(settings, target))

    def progress(done: int, total: int) -> None:
        if not stopped.is_set() and not restarting.is_alive():
            restarting.start()
            stopped.wait(30)  # the first server goes before another chunk is taken

    restarting = threading.Thread(target=restart, daemon=True)
    dest = tmp_path / "out" / "back.npz"
    try:
        with Client(target, timeout=30) as client:
            artifact = client.upload_dataset(data)
        if sync:
            with Client(target, timeout=30) as client:
                got = client.download(artifact.id, dest, progress=progress)
        else:

            async def fetch():
                async with AsyncClient(target, timeout=30) as client:
                    return await client.download(artifact.id, dest, progress=progress)

            got = asyncio.run(fetch())
        assert stopped.is_set() and len(servers) == 2  # restarted midway
        assert hashlib.sha256(got.read_bytes()).hexdigest() == artifact.id
        assert not list(dest.parent.glob("*.part"))
    finally:
        if restarting.is_alive():
            restarting.join(30)
        for srv in servers:
            srv.stop()
