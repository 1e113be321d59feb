"""A download from a server that stalls mid-stream ends once no chunk came for the client's
timeout (DeadlineExceeded, exit 7), keeping what arrived for a retry; the sync and asyncio
clients alike."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import grpc
import grpc.aio
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import AsyncClient, Client, DeadlineExceeded

DATA = bytes(range(256)) * 16
ID = hashlib.sha256(DATA).hexdigest()
FIRST = 1000


class _Cancelled(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "Locally cancelled by application!"


class StalledCall:
    """One chunk, then nothing until cancelled (as a grpc call ends when cancel() is called)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def __iter__(self):
        yield pb.DownloadChunk(offset=0, data=DATA[:FIRST], total_size=len(DATA))
        assert self.cancelled.wait(30), "the stalled call was never cancelled"
        raise _Cancelled()

    def cancel(self) -> None:
        self.cancelled.set()


class StalledStub:
    def download(self, request, metadata=()):
        self.call = StalledCall()
        return self.call


def test_a_stalled_download_ends_after_the_timeout_and_keeps_what_arrived(tmp_path):
    with Client("127.0.0.1:1", timeout=0.5) as client:  # never connects: the stub is replaced
        client._transfers = StalledStub()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no data for 0.5 s") as error:
            client.download(ID, tmp_path / "m.keras")
    assert time.monotonic() - started < 5 and error.value.exit_code == 7
    assert client._transfers.call.cancelled.is_set()
    assert (tmp_path / f"m.keras.{ID[:16]}.part").read_bytes() == DATA[:FIRST]


class AsyncStalledCall:
    def __init__(self) -> None:
        self.cancelled = False

    async def _run(self):
        yield pb.DownloadChunk(offset=0, data=DATA[:FIRST], total_size=len(DATA))
        await asyncio.sleep(3600)

    def __aiter__(self):
        return self._run()

    def cancel(self) -> None:
        self.cancelled = True


class AsyncStalledStub:
    def download(self, request, metadata=()):
        self.call = AsyncStalledCall()
        return self.call


def test_a_stalled_async_download_ends_after_the_timeout_and_keeps_what_arrived(tmp_path):
    async def run() -> AsyncStalledStub:
        async with AsyncClient("127.0.0.1:1", timeout=0.5) as client:
            client._transfers = AsyncStalledStub()
            with pytest.raises(DeadlineExceeded, match="no data for 0.5 s"):
                await asyncio.wait_for(client.download(ID, tmp_path / "m.keras"), 10)
            return client._transfers

    stub = asyncio.run(run())
    assert stub.call.cancelled
    assert (tmp_path / f"m.keras.{ID[:16]}.part").read_bytes() == DATA[:FIRST]
