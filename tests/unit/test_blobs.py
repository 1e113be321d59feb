"""The local artifact store's writer: past the page cache where the file system allows it
(pruning.files.DirectWriter), else through it with the disk's writeback started early; one
fsync either way."""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys

import pytest

from pruning_core import blobs, objectstore
from pruning_core.objectstore import LocalStore

MiB = 1 << 20


@pytest.fixture
def calls(monkeypatch):
    """The ranges whose writeback a writer through the page cache starts (the real call is
    still made)."""
    seen: list[tuple[int, int]] = []
    real = blobs._sync_file_range

    def record(fd: int, offset: int, length: int, flags: int) -> int:
        seen.append((offset, length))
        if real is None:
            return 0
        rc = real(fd, offset, length, flags)
        assert rc == 0, os.strerror(ctypes.get_errno())  # the real call took its arguments
        return rc

    monkeypatch.setattr(blobs, "_sync_file_range", record)
    return seen


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_sync_file_range_is_found_on_linux():
    assert blobs._sync_file_range is not None


def test_writeback_starts_every_step_and_the_file_is_whole(tmp_path, calls):
    writer = LocalStore(tmp_path, direct=False).writer()
    data = os.urandom(MiB)
    step = blobs.WRITEBACK_EVERY // MiB
    for _ in range(2 * step + 3):
        writer.write(data)
    # each range starts where the last ended: every byte is covered once
    assert calls == [(0, blobs.WRITEBACK_EVERY), (blobs.WRITEBACK_EVERY, blobs.WRITEBACK_EVERY)]
    assert writer.written_back == 2 * blobs.WRITEBACK_EVERY
    artifact_id = writer.commit()
    path = tmp_path / artifact_id[:2] / artifact_id
    assert path.stat().st_size == (2 * step + 3) * MiB
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact_id


def test_odd_chunk_sizes_start_writeback_once_a_step_is_reached(tmp_path, calls):
    writer = LocalStore(tmp_path, direct=False).writer()
    sizes = [3 * MiB + 7] * 12  # 36 MiB and change, in chunks that do not divide a step
    for size in sizes:
        writer.write(b"x" * size)
    ends = [offset + length for offset, length in calls]
    assert [offset for offset, _ in calls] == [0, *ends[:-1]]
    assert all(length >= blobs.WRITEBACK_EVERY for _, length in calls)
    assert ends[-1] == writer.written_back and sum(sizes) - writer.written_back < blobs.WRITEBACK_EVERY
    writer.discard()


def test_a_scratch_spool_is_neither_written_back_nor_fsynced(tmp_path, calls, monkeypatch):
    assert objectstore._S3Writer.durable is False  # the S3 backend's spool: S3 keeps the bytes
    writer = LocalStore(tmp_path, direct=False).writer()
    writer.durable = False
    for _ in range(2 * blobs.WRITEBACK_EVERY // MiB):
        writer.write(b"x" * MiB)
    assert calls == [] and writer.written_back == 0
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    writer.close()
    assert synced == []  # scratch: written, not fsynced
    writer.discard()
    durable = LocalStore(tmp_path, direct=False).writer()
    durable.write(b"x" * MiB)
    durable.close()
    assert len(synced) == 1
    durable.discard()


@pytest.mark.parametrize("sizes", [[3 * MiB + 7] * 12, [1] * 5000, [4 << 20], [(4 << 20) + 4096, 4095], []])
def test_a_direct_writer_writes_the_whole_file_and_fsyncs_once(tmp_path, monkeypatch, sizes):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    writer = LocalStore(tmp_path).writer()
    expected = hashlib.sha256()
    for i, size in enumerate(sizes):
        chunk = bytes([i % 251]) * size
        writer.write(chunk)
        expected.update(chunk)
    assert writer.written_back == 0  # written past the page cache: no writeback to start
    artifact_id = writer.commit()
    assert artifact_id == expected.hexdigest() and len(synced) == 1
    path = tmp_path / artifact_id[:2] / artifact_id
    assert path.stat().st_size == sum(sizes)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact_id
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_write_failing_midway_is_discarded_without_keeping_the_file_open(tmp_path, monkeypatch):
    """A full disk: the upload is dropped, and its file's space and descriptors go with it."""
    import errno

    store = LocalStore(tmp_path)
    before = set(os.listdir("/proc/self/fd"))
    writer = store.writer()
    real_write = os.write
    state = {"left": 6 * MiB}

    def write(fd, data):
        if state["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), state["left"])
        state["left"] -= n
        return real_write(fd, memoryview(data)[:n])

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(OSError, match="No space"):
        for _ in range(3):
            writer.write(os.urandom(4 * MiB))
    writer.discard()  # the failed block is not tried again: nothing raised
    assert not writer.path.exists()
    after = set(os.listdir("/proc/self/fd"))
    assert after <= before  # no descriptor left on the removed file
    assert writer._lock == -1 and writer._file.fd == -1


def test_downloads_read_ahead_from_a_shared_spare_and_give_it_back():
    """A download whose client stopped reading held ``readahead`` chunks until its idle
    timeout: 200 of them grew the server by 475 MiB (bench/bench_stalled_downloads.py). Reads
    beyond one in flight now come from a spare all downloads share, given back as they end."""
    import asyncio
    import tempfile

    async def scenario(root):
        store = LocalStore(root, readahead=4, direct=False, readahead_total=3)
        data = os.urandom(10 * 4096 + 123)
        writer = store.writer()
        writer.write(data)
        artifact = writer.commit()
        readers = [store.read(artifact, chunk=4096) for _ in range(3)]
        firsts = [await anext(reader) for reader in readers]  # each then stalls, as a client that stops reading
        assert firsts == [data[:4096]] * 3
        assert 0 <= store.spare.left < 3  # the first reader took spare chunks; none went below zero
        whole = b"".join([firsts[0]] + [chunk async for chunk in readers[0]])
        assert whole == data
        for reader in readers[1:]:
            await reader.aclose()
        assert store.spare.left == 3  # all given back
        store.spare.left = 0  # no spare at all: one read in flight, every byte still comes
        assert b"".join([chunk async for chunk in store.read(artifact, 1000, chunk=4096)]) == data[1000:]
        assert store.spare.left == 0

    with tempfile.TemporaryDirectory() as root:
        asyncio.run(scenario(root))
