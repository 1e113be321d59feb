"""pruning.files.UncachedReader: positional reads that copy what the page cache holds and read
the rest past it (O_DIRECT), with the right bytes at any offset and size either way, and plain
reads where O_DIRECT is refused (tmpfs, a read refused after the open)."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import pathlib
import random

import pytest
from direct_io import direct_allowed

from pruning import files
from pruning.files import ALIGN, DirectWriter, UncachedReader

MiB = 1 << 20


def _uncached_file(path: pathlib.Path, size: int) -> bytes:
    """A new file written past the page cache: none of its pages is cached."""
    data = os.urandom(size)
    with DirectWriter(path) as writer:
        writer.write(data)
    return data


@pytest.fixture
def direct_blob(tmp_path):
    """A 4 MiB file none of whose pages is cached, its bytes, and a reader of it that reads
    directly (skipped where O_DIRECT or mincore is not available)."""
    if not direct_allowed(tmp_path) or files._LIBC is None:
        pytest.skip("O_DIRECT or mincore is not available here")
    path = tmp_path / "blob"
    data = _uncached_file(path, 4 * MiB)
    reader = UncachedReader(path)
    yield path, data, reader
    reader.close()


def _reads(reader: UncachedReader, data: bytes, count: int = 200, most: int = MiB) -> None:
    buffer = mmap.mmap(-1, UncachedReader.buffer_size(most))
    rng = random.Random(0)
    cases = [(0, most), (len(data) - 5, most), (len(data), most), (len(data) + 9, 10), (ALIGN - 1, ALIGN + 2)]
    cases += [(rng.randrange(len(data) + 10), rng.randrange(most + 1)) for _ in range(count)]
    for offset, size in cases:
        with reader.read(size, offset, buffer) as view:
            assert bytes(view) == data[offset : offset + size], (offset, size)


@pytest.mark.parametrize("direct", [True, False])
def test_every_range_reads_back_its_bytes(tmp_path, direct):
    path = tmp_path / "blob"
    data = _uncached_file(path, 3 * MiB + 12_345)
    reader = UncachedReader(path, direct=direct)
    try:
        assert reader.direct == (direct and direct_allowed(tmp_path) and files._LIBC is not None)
        _reads(reader, data)
        path.read_bytes()  # now all of it is in the page cache
        _reads(reader, data)
    finally:
        reader.close()


def test_uncached_ranges_are_read_directly_and_cached_ones_from_the_cache(direct_blob, monkeypatch):
    path, data, reader = direct_blob
    read_from: list[int] = []
    real = os.preadv

    def preadv(fd, buffers, offset, *flags):
        read_from.append(fd)
        return real(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", preadv)
    buffer = mmap.mmap(-1, UncachedReader.buffer_size(MiB))
    assert not reader.cached(MiB, 0)
    assert bytes(reader.read(MiB, 0, buffer)) == data[:MiB]
    assert read_from == [reader.direct_fd]
    assert not reader.cached(MiB, 0)  # a direct read leaves nothing in the page cache

    with open(path, "rb") as f:
        f.read(2 * MiB)
    assert reader.cached(MiB, 0) and reader.cached(MiB, MiB)
    assert bytes(reader.read(MiB, 5, buffer)) == data[5 : MiB + 5]
    assert read_from[1:] == [reader.fd]


@pytest.mark.skipif(not pathlib.Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_tmpfs_refuses_o_direct_and_every_read_is_plain():
    path = pathlib.Path("/dev/shm") / f"pruning-uncached-{os.getpid()}"
    try:
        path.write_bytes(data := os.urandom(MiB + 3))
        reader = UncachedReader(path)
        try:
            assert reader.direct == direct_allowed(path.parent)
            _reads(reader, data, count=20)
        finally:
            reader.close()
    finally:
        path.unlink(missing_ok=True)


def test_a_read_refused_after_the_open_goes_on_plainly(direct_blob, monkeypatch):
    _, data, reader = direct_blob
    real = os.preadv

    def preadv(fd, buffers, offset, *flags):
        if fd == reader.direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", preadv)
    _reads(reader, data, count=10)
    assert not reader.direct


def test_another_read_error_stands(direct_blob, monkeypatch):
    _, _, reader = direct_blob

    def preadv(fd, buffers, offset, *flags):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", preadv)
    with pytest.raises(OSError, match="Input/output"):
        reader.read(MiB, 0, mmap.mmap(-1, UncachedReader.buffer_size(MiB)))
    reader.close()
    assert reader.fd == reader.direct_fd == -1
    reader.close()  # again: nothing left to close


def test_an_empty_file_reads_nothing(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    reader = UncachedReader(path)
    try:
        assert bytes(reader.read(MiB, 0, mmap.mmap(-1, UncachedReader.buffer_size(MiB)))) == b""
    finally:
        reader.close()


def test_a_close_during_a_read_waits_for_it_and_later_reads_are_refused(tmp_path, monkeypatch):
    """A download cancelled midway closes its reader while reads run in threads it cannot
    stop: the file stays open for them (no read on a closed or reused descriptor), is closed
    by the last, and a read queued behind the close is refused."""
    import threading

    path = tmp_path / "blob"
    data = _uncached_file(path, MiB)
    reader = UncachedReader(path)
    inside, release = threading.Event(), threading.Event()
    real = reader._read

    def slow_read(size, offset, whole):
        inside.set()
        release.wait(10)
        return real(size, offset, whole)

    monkeypatch.setattr(reader, "_read", slow_read)
    got: list[bytes] = []
    buffer = mmap.mmap(-1, UncachedReader.buffer_size(MiB))
    thread = threading.Thread(target=lambda: got.append(bytes(reader.read(MiB, 0, buffer))))
    thread.start()
    assert inside.wait(10)
    reader.close()
    assert reader.fd >= 0  # still open for the read under way
    with pytest.raises(ValueError, match="closed"):
        reader.read(10, 0, mmap.mmap(-1, UncachedReader.buffer_size(10)))
    release.set()
    thread.join(10)
    assert got == [data] and reader.fd == reader.direct_fd == -1


def _store_descriptors(root: pathlib.Path) -> tuple[int, int]:
    """Descriptors and mappings this process holds on files under ``root``."""
    fds = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds += os.readlink(f"/proc/self/fd/{name}").startswith(str(root))
    with open("/proc/self/maps") as maps:
        return fds, sum(str(root) in line for line in maps)


@pytest.mark.skipif(not pathlib.Path("/proc/self/maps").exists(), reason="no /proc")
def test_downloads_cancelled_twice_leave_no_descriptor_or_mapping(tmp_path):
    """A download cancelled, then cancelled again while its reader's cleanup awaited the reads
    under way, skipped the close: each left its two descriptors and a mapping of the whole
    artifact (and a deleted artifact's disk space) for good."""
    import asyncio
    import hashlib

    from pruning_core.objectstore import LocalStore

    store = LocalStore(tmp_path / "store")
    data = os.urandom(16 * MiB)
    artifact_id = hashlib.sha256(data).hexdigest()
    store.path(artifact_id).parent.mkdir(parents=True)
    store.path(artifact_id).write_bytes(data)

    async def download():
        chunks = store.read(artifact_id, 0, MiB, len(data))
        try:
            async for _ in chunks:
                await asyncio.sleep(0)
        finally:
            await chunks.aclose()

    async def main():
        for i in range(20):
            task = asyncio.create_task(download())
            await asyncio.sleep(0.002 * (i % 5))
            task.cancel()
            for _ in range(i % 4):
                await asyncio.sleep(0)
            task.cancel()  # a second cancellation, while the first one's cleanup waits
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.5)  # the reads the cancellations could not stop have ended

    asyncio.run(main())
    assert _store_descriptors(tmp_path / "store") == (0, 0)
