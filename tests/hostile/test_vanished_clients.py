"""A client that vanishes without closing its connection (a host powered off, a dropped
network: no FIN, no RST) does not hold its watch slot forever: the server's keepalive pings go
unanswered and it closes the connection. Simulated by a TCP relay that stops relaying."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest
from hostile import hostile_server, tiny  # noqa: F401 - fixture
from relay import CuttingRelay

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_client import Client, job_spec

pytestmark = pytest.mark.integration
META = (("x-api-key", "key-a"),)


class FreezingRelay:
    """Relays one TCP connection to ``target`` until ``freeze()``; then reads and writes
    nothing more but keeps both sockets open, as a vanished peer does."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.frozen = target, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(self.target)
        self.sockets += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.1)
        while not self.frozen.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            dst.sendall(data)

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        for s in [self.listener, *self.sockets]:
            s.close()


def _opens(call) -> bool:
    """Whether a server-streaming ``call`` gets its first message (False: no slot free)."""
    try:
        next(call)
        return True
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        return False
    finally:
        call.cancel()


def test_a_vanished_clients_watch_frees_its_slot(env, tiny):  # noqa: F811
    server = hostile_server(env, "vanished", max_watches_per_tenant=1, keepalive_s=1.0, keepalive_timeout_s=1.0)
    relay = FreezingRelay(("127.0.0.1", server.port))
    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            job = client.submit(
                job_spec(client.upload_model(tiny["keras"]).id, dataset=client.upload_dataset(tiny["data"]).id)
            )
            direct = pb_grpc.PruningServiceStub(client._channel)
            with grpc.insecure_channel(f"127.0.0.1:{relay.port}") as far:
                held = pb_grpc.PruningServiceStub(far).WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=META)
                assert next(held).state_change.to == pb.JOB_STATE_QUEUED  # the slot is taken
                assert not _opens(direct.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=META, timeout=5))
                relay.freeze()  # the far client is gone, its connection never closed
                deadline = time.monotonic() + 20
                while not _opens(direct.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=META, timeout=5)):
                    assert time.monotonic() < deadline, "the vanished client still holds the slot"
                    time.sleep(0.5)
                held.cancel()
    finally:
        relay.close()
        server.stop()


def _download_opens(client: Client, request: pb.DownloadArtifactRequest) -> bool:
    """Whether another client's download gets its first chunk (False: no slot free)."""
    return _opens(pb_grpc.PruningServiceStub(client._channel).DownloadArtifact(request, metadata=META, timeout=5))


def _until_a_download_opens(client: Client, request: pb.DownloadArtifactRequest, holder: str) -> None:
    deadline = time.monotonic() + 20
    while not _download_opens(client, request):
        assert time.monotonic() < deadline, f"the {holder} client still holds the download slot"
        time.sleep(0.5)


def test_a_vanished_clients_download_frees_its_slot(env, tmp_path):
    from hostile import npz_bytes

    server = hostile_server(
        env, "vanished-download", max_downloads_per_tenant=1, keepalive_s=1.0, keepalive_timeout_s=1.0
    )
    relay = FreezingRelay(("127.0.0.1", server.port))
    data = tmp_path / "big.npz"
    data.write_bytes(npz_bytes(n_train=400_000))  # ~14 MiB: more than the sockets and windows hold
    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            artifact = client.upload_dataset(data)
            request = pb.DownloadArtifactRequest(artifact_id=artifact.id)

            with grpc.insecure_channel(f"127.0.0.1:{relay.port}") as far:
                held = pb_grpc.PruningServiceStub(far).DownloadArtifact(request, metadata=META)
                next(held)  # the slot is taken, the stream under way
                relay.freeze()  # the far client is gone mid-download, its connection never closed
                assert not _download_opens(client, request)
                _until_a_download_opens(client, request, "vanished")
                held.cancel()
    finally:
        relay.close()
        server.stop()


def test_a_client_that_stops_reading_a_download_frees_its_slot(env, tmp_path):
    """A live client (its pings answered) that stops taking chunks held its download slot,
    and with the tenant's last slot every other download of the tenant, for good. Past
    download_idle_timeout_s without a chunk taken, the download is ended: the slot is free at
    once, and the client, reading on, gets what was sent, then DEADLINE_EXCEEDED, not a stream
    that ends as if complete."""
    from hostile import npz_bytes

    server = hostile_server(
        env, "stalled-download", max_downloads_per_tenant=1, download_idle_timeout_s=1.0, max_upload_bytes=64 << 20
    )
    data = tmp_path / "big.npz"
    data.write_bytes(npz_bytes(n_train=1_000_000))  # ~38 MiB: far more than the sockets and windows hold
    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            artifact = client.upload_dataset(data)
            request = pb.DownloadArtifactRequest(artifact_id=artifact.id)

            # its window kept at 64 KiB (no BDP growth): the client cannot take the whole artifact
            # into its buffers, so the server's writes wait on it as on a client that stopped reading
            with grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as other:
                held = pb_grpc.PruningServiceStub(other).DownloadArtifact(request, metadata=META)
                received = len(next(held).data)  # the slot is taken; then nothing more is read
                assert not _download_opens(client, request)
                _until_a_download_opens(client, request, "stalled")
                with pytest.raises(grpc.RpcError) as ended:
                    for chunk in held:
                        received += len(chunk.data)
                assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "took no chunk for 1 s" in ended.value.details()
                assert received < artifact.size
    finally:
        server.stop()


@pytest.mark.parametrize("sync", [True, False])
def test_a_download_cut_midway_resumes_from_what_arrived(env, tmp_path, sync):
    """A connection reset midway (UNAVAILABLE) ended Client.download with the partial file
    kept for a manual retry; the SDK now resumes it itself from that file."""
    import asyncio
    import hashlib

    from hostile import npz_bytes

    from pruning_client.aio import AsyncClient

    server = hostile_server(env, "cut-download")
    data = tmp_path / "big.npz"
    data.write_bytes(npz_bytes(n_train=400_000))  # ~14 MiB
    relay = CuttingRelay(("127.0.0.1", server.port), cut_after=4 << 20)
    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            artifact = client.upload_dataset(data)
        target, dest = f"127.0.0.1:{relay.port}", tmp_path / "back.npz"
        if sync:
            with Client(target, api_key="key-a", timeout=30) as far:
                got = far.download(artifact.id, dest)
        else:

            async def fetch():
                async with AsyncClient(target, api_key="key-a", timeout=30) as far:
                    return await far.download(artifact.id, dest)

            got = asyncio.run(fetch())
        assert hashlib.sha256(got.read_bytes()).hexdigest() == artifact.id
        assert relay.connections == 2  # cut once, resumed once
        assert not list(tmp_path.glob("*.part"))
    finally:
        relay.close()
        server.stop()


def test_a_download_the_server_ended_for_a_stall_is_resumed_by_the_sdk(env, tmp_path):
    """A client that paused past download_idle_timeout_s (a full disk being cleared, a
    debugger) got DEADLINE_EXCEEDED and a partial file; the SDK resumes from it."""
    import hashlib

    from hostile import npz_bytes

    server = hostile_server(env, "paused-download", download_idle_timeout_s=1.0)
    data = tmp_path / "big.npz"
    data.write_bytes(npz_bytes(n_train=400_000))  # ~14 MiB: more than the sockets and windows hold
    paused = []

    def progress(done: int, total: int) -> None:
        if not paused:
            paused.append(done)
            time.sleep(3)  # the receiver stops taking chunks: the server ends the call

    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            artifact = client.upload_dataset(data)
            got = client.download(artifact.id, tmp_path / "back.npz", progress=progress)
        assert hashlib.sha256(got.read_bytes()).hexdigest() == artifact.id and paused
    finally:
        server.stop()


def test_a_client_on_a_slow_link_finishes_its_download(env, tmp_path):
    """The idle timeout ends downloads whose client stopped reading, not slow ones: a client
    taking 64 KiB/s, 4 s for each 256 KiB chunk against a 0.5 s timeout, finishes in one call
    (gRPC takes each chunk as the link frees the window, never waiting for all of it)."""
    import hashlib

    from hostile import npz_bytes

    server = hostile_server(env, "slow-link", download_idle_timeout_s=0.5, chunk_size=256 << 10)
    data = tmp_path / "data.npz"
    data.write_bytes(npz_bytes(n_train=12_000))  # ~460 KiB: two chunks
    relay = CuttingRelay(("127.0.0.1", server.port), rate=64 << 10)
    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            artifact = client.upload_dataset(data)
        started = time.monotonic()
        with Client(f"127.0.0.1:{relay.port}", api_key="key-a", timeout=30) as far:
            got = far.download(artifact.id, tmp_path / "back.npz")
        assert hashlib.sha256(got.read_bytes()).hexdigest() == artifact.id
        assert time.monotonic() - started > artifact.size / (64 << 10) * 0.8  # the link was that slow
        assert relay.connections == 1  # never ended for a stall, never resumed
    finally:
        relay.close()
        server.stop()
