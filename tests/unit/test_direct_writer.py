"""pruning.files.DirectWriter: whole files past the page cache where O_DIRECT is allowed (any
sizes, a tail that is not aligned, appends), and plain files where it is not (tmpfs, an
unaligned start, a write refused after the open)."""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib

import pytest
from direct_io import direct_allowed

from pruning.files import ALIGN, BLOCK, DirectWriter


def _pieces(sizes: list[int]) -> list[bytes]:
    return [os.urandom(size) for size in sizes]


@pytest.mark.parametrize(
    "sizes",
    [[], [1], [ALIGN], [BLOCK], [BLOCK + 1], [3 << 20] * 5, [1] * 10_000, [BLOCK - 1, 2, BLOCK * 2 + 5]],
)
@pytest.mark.parametrize("direct", [True, False])
def test_the_file_holds_every_byte_written(tmp_path, sizes, direct):
    path = tmp_path / "out"
    pieces = _pieces(sizes)
    with DirectWriter(path, direct=direct) as writer:
        assert writer.direct == (direct and direct_allowed(tmp_path))
        for piece in pieces:
            assert writer.write(memoryview(piece)) == len(piece)
    assert path.read_bytes() == b"".join(pieces)


@pytest.mark.parametrize("start", [0, BLOCK, ALIGN * 3, 1000])
def test_appending_writes_after_the_end_direct_only_from_an_aligned_one(tmp_path, start):
    path = tmp_path / "part"
    head = os.urandom(start)
    path.write_bytes(head)
    tail = os.urandom(BLOCK + 12345)
    with DirectWriter(path, append=True) as writer:
        assert writer.size == start
        assert writer.direct == (start % ALIGN == 0 and direct_allowed(tmp_path))
        writer.write(tail)
    assert path.read_bytes() == head + tail


def test_a_new_file_replaces_what_was_there(tmp_path):
    path = tmp_path / "out"
    path.write_bytes(b"old" * 10_000)
    with DirectWriter(path) as writer:
        writer.write(b"new")
    assert path.read_bytes() == b"new"


@pytest.mark.skipif(not pathlib.Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_tmpfs_refuses_o_direct_and_gets_a_plain_file():
    directory = pathlib.Path("/dev/shm")
    path = directory / f"pruning-direct-{os.getpid()}"
    try:
        data = os.urandom(BLOCK + 7)
        with DirectWriter(path) as writer:
            assert writer.direct == direct_allowed(directory)
            writer.write(data)
        assert path.read_bytes() == data
    finally:
        path.unlink(missing_ok=True)


def test_a_write_refused_after_the_open_goes_on_plainly(tmp_path, monkeypatch):
    if not direct_allowed(tmp_path):
        pytest.skip("O_DIRECT is not allowed here")
    real_write = os.write
    refused = []

    def write(fd: int, data) -> int:
        if not refused:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    data = os.urandom(2 * BLOCK + 3)
    path = tmp_path / "out"
    with DirectWriter(path) as writer:
        writer.write(data)
        assert not writer.direct and refused
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_another_error_stands_and_the_file_is_closed(tmp_path, monkeypatch):
    def full(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = DirectWriter(tmp_path / "out")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        writer.write(os.urandom(BLOCK))
    with pytest.raises(OSError, match="No space"):
        writer.close()
    assert writer.fd < 0  # closed all the same
    writer.close()  # again: nothing to do


@pytest.mark.parametrize("direct", [True, False])
def test_after_a_write_fails_midway_the_file_holds_exactly_the_bytes_written(tmp_path, monkeypatch, direct):
    """A short write, then an error (a full disk): nothing is written twice, and a later close
    writes the rest from where it stopped."""
    real_write = os.write
    budget = {"left": 6 << 20}

    def write(fd: int, data) -> int:
        if budget["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), budget["left"])
        budget["left"] -= n
        return real_write(fd, memoryview(data)[:n])

    path = tmp_path / "part"
    data = os.urandom(3 * BLOCK + 5)
    writer = DirectWriter(path, direct=direct)
    monkeypatch.setattr(os, "write", write)
    with pytest.raises(OSError, match="No space"):
        writer.write(data)
    held = path.read_bytes()
    assert held == data[: len(held)] and writer.size == len(held)  # a prefix, once
    budget["left"] = 1 << 40  # room again
    taken = len(held) + (writer._fill if writer._buffer is not None else 0)
    writer.close()
    assert path.read_bytes() == data[:taken]


def test_a_close_from_another_thread_waits_for_the_write_under_way(tmp_path, monkeypatch):
    import threading
    import time

    real_write = os.write
    entered, release = threading.Event(), threading.Event()

    def slow(fd: int, data) -> int:
        entered.set()
        release.wait(10)
        return real_write(fd, data)

    path = tmp_path / "out"
    data = os.urandom(BLOCK)
    writer = DirectWriter(path)
    monkeypatch.setattr(os, "write", slow)
    worker = threading.Thread(target=writer.write, args=(data,))
    worker.start()
    assert entered.wait(10)
    closer = threading.Thread(target=writer.close)
    closer.start()
    time.sleep(0.2)
    assert closer.is_alive()  # waits for the write
    release.set()
    worker.join(10)
    closer.join(10)
    assert path.read_bytes() == data
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"late")
