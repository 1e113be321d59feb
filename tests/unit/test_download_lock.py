"""Two downloads of one artifact to one file at once (parallel pipeline steps sharing a
directory, a retried step while the first still runs): the second waits for the first and
finds the file in place, rather than writing into the same partial file and, once the first
moved it into place, into the checked file itself."""

import asyncio
import hashlib
import threading
import zlib

import pytest

from pruning import wire
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client
from pruning_client.aio import AsyncClient

DATA = bytes(range(256)) * 400
ID = hashlib.sha256(DATA).hexdigest()


class SlowStub:
    """Serves DATA in chunks; the first call stops after its first chunk until ``go`` is set."""

    def __init__(self):
        self.offsets, self.first_chunk_sent, self.go = [], threading.Event(), threading.Event()

    def download(self, request, metadata=()):
        self.offsets.append(request.offset)
        first = len(self.offsets) == 1
        for start in range(request.offset, len(DATA), 1000):
            message = pb.DownloadChunk(
                offset=start, data=DATA[start : start + 1000], total_size=len(DATA), crc32=zlib.crc32(DATA)
            )
            yield wire.parse_download_chunk(message.SerializeToString())
            if first and start == request.offset:
                self.first_chunk_sent.set()
                assert self.go.wait(10)


def test_a_second_download_of_the_same_file_waits_and_finds_it_in_place(tmp_path):
    stub = SlowStub()
    dest = tmp_path / "model.keras"
    results = {}

    def fetch(name):
        with Client("127.0.0.1:1") as client:
            client._transfers = stub
            try:
                results[name] = client.download(ID, dest)
            except Exception as error:  # noqa: BLE001
                results[name] = error

    first = threading.Thread(target=fetch, args=("first",))
    first.start()
    assert stub.first_chunk_sent.wait(10)
    second = threading.Thread(target=fetch, args=("second",))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waits for the first: no second call meanwhile
    assert stub.offsets == [0]
    stub.go.set()
    first.join(10)
    second.join(10)
    assert results == {"first": dest, "second": dest}
    assert dest.read_bytes() == DATA
    assert stub.offsets == [0]  # the second found the file in place: no call
    assert list(tmp_path.iterdir()) == [dest]


def test_an_async_download_of_the_same_file_waits_for_a_sync_one(tmp_path):
    stub = SlowStub()
    dest = tmp_path / "model.keras"
    done = {}

    def first():
        with Client("127.0.0.1:1") as client:
            client._transfers = stub
            done["first"] = client.download(ID, dest)

    thread = threading.Thread(target=first)
    thread.start()
    assert stub.first_chunk_sent.wait(10)

    async def second():
        async with AsyncClient("127.0.0.1:1") as client:
            client._transfers = None  # it must make no call: the file is in place once it may go on
            task = asyncio.ensure_future(client.download(ID, dest))
            await asyncio.sleep(0.5)
            assert not task.done() and stub.offsets == [0]
            stub.go.set()
            return await asyncio.wait_for(task, 10)

    assert asyncio.run(second()) == dest
    thread.join(10)
    assert done["first"] == dest and dest.read_bytes() == DATA and stub.offsets == [0]
    assert list(tmp_path.iterdir()) == [dest]


def test_a_cancelled_waiting_async_download_leaves_the_other_ones_partial_file(tmp_path):
    stub = SlowStub()
    dest = tmp_path / "model.keras"
    client = Client("127.0.0.1:1")
    client._transfers = stub
    thread = threading.Thread(target=client.download, args=(ID, dest))
    thread.start()
    assert stub.first_chunk_sent.wait(10)

    async def cancel_one():
        async with AsyncClient("127.0.0.1:1") as aclient:
            aclient._transfers = None  # never reaches a call while the other one holds the file
            task = asyncio.ensure_future(aclient.download(ID, dest))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(cancel_one())
    assert (tmp_path / f"model.keras.{ID[:16]}.part").exists()  # the first one's, untouched
    stub.go.set()
    thread.join(10)
    client.close()
    assert dest.read_bytes() == DATA


@pytest.mark.parametrize("bad", ["a/b", "../" + ID[3:], ID.upper(), ID[:16], ""])
def test_a_download_of_what_is_not_an_artifact_id_is_refused_before_any_file(tmp_path, bad):
    """As the server would answer (INVALID_ARGUMENT, exit 2), with no file or folder made:
    an id with a separator used to raise pathlib's bare ValueError."""
    from pruning_client import InvalidArgument

    with Client("127.0.0.1:1") as client:
        client._transfers = None  # no call
        with pytest.raises(InvalidArgument, match="artifact_id: must be 64 lowercase hex digits"):
            client.download(bad, tmp_path / "out" / "m.keras")

    async def refused() -> None:
        async with AsyncClient("127.0.0.1:1") as client:
            client._transfers = None
            with pytest.raises(InvalidArgument, match="artifact_id: must be 64"):
                await client.download(bad, tmp_path / "out" / "m.keras")

    asyncio.run(refused())
    assert list(tmp_path.iterdir()) == []
