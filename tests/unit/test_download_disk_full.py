"""A download that cannot write its partial file (a full disk, a file size limit) says which
file, and that it is kept for a retry: a bare "[Errno 28] No space left on device" in a
pipeline's log names neither (the sync and asyncio clients alike)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import zlib

import pytest

from pruning import wire
from pruning.files import DirectWriter
from pruning.v1 import pruning_pb2 as pb
from pruning_client import AsyncClient, Client

DATA = bytes(range(256)) * 40
ID = hashlib.sha256(DATA).hexdigest()


def _chunks(offset: int):
    for start in range(offset, len(DATA), 1000):
        message = pb.DownloadChunk(
            offset=start, data=DATA[start : start + 1000], total_size=len(DATA), crc32=zlib.crc32(DATA)
        )
        yield wire.parse_download_chunk(message.SerializeToString())


class Stub:
    def download(self, request, metadata=()):
        return _chunks(request.offset)


class AsyncStub:
    def download(self, request, metadata=()):
        async def chunks():
            for chunk in _chunks(request.offset):
                yield chunk

        return chunks()


@pytest.fixture()
def full_disk(monkeypatch):
    written, original = [], DirectWriter.write

    def write(self, data):  # the first chunk goes in, the next finds the disk full
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")  # as os.write raises it: no file name
        written.append(len(data))
        return original(self, data)

    monkeypatch.setattr(DirectWriter, "write", write)


def test_a_full_disk_names_the_partial_file_kept(tmp_path, full_disk):
    with Client("127.0.0.1:1") as client:
        client._transfers = Stub()
        with pytest.raises(OSError) as raised:
            client.download(ID, tmp_path / "model.keras")
    part = tmp_path / f"model.keras.{ID[:16]}.part"
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(part)
    assert "kept for a retry" in raised.value.strerror and part.exists()


def test_the_async_client_names_it_too(tmp_path, full_disk):
    async def run():
        async with AsyncClient("127.0.0.1:1") as client:
            client._transfers = AsyncStub()
            await client.download(ID, tmp_path / "model.keras")

    with pytest.raises(OSError) as raised:
        asyncio.run(run())
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / f"model.keras.{ID[:16]}.part")
