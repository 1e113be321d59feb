"""A download from a server that stalls mid-stream ends once no chunk came for the client's
timeout (DeadlineExceeded, exit 7), keeping what arrived for a retry; the sync and asyncio
clients alike. Each call that brought bytes is resumed from them (DOWNLOAD_RESUMES times), so a
server that stalls after every chunk costs a few calls, not one."""

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
    """One chunk from the asked offset, then nothing until cancelled (as a grpc call ends
    when cancel() is called)."""

    def __init__(self, offset: int) -> None:
        self.cancelled = threading.Event()
        self.offset = offset

    def __iter__(self):
        yield pb.DownloadChunk(offset=self.offset, data=DATA[self.offset : self.offset + FIRST], total_size=len(DATA))
        assert self.cancelled.wait(30), "the stalled call was never cancelled"
        raise _Cancelled()

    def cancel(self) -> None:
        self.cancelled.set()


class StalledStub:
    def __init__(self) -> None:
        self.offsets: list[int] = []

    def download(self, request, metadata=()):
        self.offsets.append(request.offset)
        self.call = StalledCall(request.offset)
        return self.call


RESUMED = [i * FIRST for i in range(4)]  # the first call, then 3 resumes, each from what arrived


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    import pruning_client.aio
    import pruning_client.client

    for module in (pruning_client.client, pruning_client.aio):
        monkeypatch.setattr(module, "RESUME_BACKOFF_S", 0.01)


def test_a_stalled_download_ends_after_the_timeout_and_keeps_what_arrived(tmp_path):
    with Client("127.0.0.1:1", timeout=0.5) as client:  # never connects: the stub is replaced
        client._transfers = StalledStub()
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no data for 0.5 s") as error:
            client.download(ID, tmp_path / "m.keras")
    assert time.monotonic() - started < 10 and error.value.exit_code == 7
    assert client._transfers.call.cancelled.is_set() and client._transfers.offsets == RESUMED
    assert (tmp_path / f"m.keras.{ID[:16]}.part").read_bytes() == DATA[: 4 * FIRST]


class AsyncStalledCall:
    def __init__(self, offset: int) -> None:
        self.cancelled = False
        self.offset = offset

    async def _run(self):
        yield pb.DownloadChunk(offset=self.offset, data=DATA[self.offset : self.offset + FIRST], total_size=len(DATA))
        await asyncio.sleep(3600)

    def __aiter__(self):
        return self._run()

    def cancel(self) -> None:
        self.cancelled = True


class AsyncStalledStub:
    def __init__(self) -> None:
        self.offsets: list[int] = []

    def download(self, request, metadata=()):
        self.offsets.append(request.offset)
        self.call = AsyncStalledCall(request.offset)
        return self.call


def test_a_stalled_async_download_ends_after_the_timeout_and_keeps_what_arrived(tmp_path):
    async def run() -> AsyncStalledStub:
        async with AsyncClient("127.0.0.1:1", timeout=0.5) as client:
            client._transfers = AsyncStalledStub()
            with pytest.raises(DeadlineExceeded, match="no data for 0.5 s"):
                await asyncio.wait_for(client.download(ID, tmp_path / "m.keras"), 15)
            return client._transfers

    stub = asyncio.run(run())
    assert stub.call.cancelled and stub.offsets == RESUMED
    assert (tmp_path / f"m.keras.{ID[:16]}.part").read_bytes() == DATA[: 4 * FIRST]
