"""The local artifact store's writer: one fsync, with the disk's writeback started early."""

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
    """The ranges whose writeback the writer starts (the real call is still made)."""
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
    writer = LocalStore(tmp_path).writer()
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
    writer = LocalStore(tmp_path).writer()
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
    writer = LocalStore(tmp_path).writer()
    writer.durable = False
    for _ in range(2 * blobs.WRITEBACK_EVERY // MiB):
        writer.write(b"x" * MiB)
    assert calls == [] and writer.written_back == 0
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    writer.close()
    assert synced == []  # scratch: flushed, not fsynced
    writer.durable = True
    writer.close()
    assert len(synced) == 1
    writer.discard()
