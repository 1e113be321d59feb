"""Content-addressed artifact files on disk: ``<root>/<sha[:2]>/<sha>``.

Writers stream into a temporary file beside the blobs and rename it into place once the
sha256 is known, so a reader never sees a partial blob and memory stays flat. A writer holds
an exclusive ``flock`` on its file until it commits or discards it: the lock dies with its
process, so :meth:`BlobStore.sweep` tells the files of a killed process (removed) from those
still being written, by any process on the host.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import pathlib
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from pruning.checksum import Crc32
from pruning.files import DirectWriter

from .transfer import Buffer, Sink

_SHA256 = re.compile(r"[0-9a-f]{64}")


class Stored(NamedTuple):
    """A file put into the store: its id (sha256), size, and CRC-32 (the artifact record's)."""

    id: str
    size: int
    crc32: int


WRITEBACK_EVERY = 16 << 20  # bytes written between two starts of their writeback
_SYNC_FILE_RANGE_WRITE = 2


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` (the os module has none), or None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _libc_sync_file_range()


def is_artifact_id(value: str) -> bool:
    return bool(_SHA256.fullmatch(value))


class BlobWriter:
    """Accumulates chunks into a temporary file while hashing them.

    The file is written past the page cache where the file system allows it
    (:class:`pruning.files.DirectWriter`: the disk reads the bytes from an aligned buffer, and a
    GiB costs the server about 0.13 s of CPU instead of 0.3 to 1.6 s of page-cache copies) and
    fsynced once, when it is closed. Written through the page cache instead (a file system
    without ``O_DIRECT``), the writeback of every ``WRITEBACK_EVERY`` bytes is started as they
    are written (Linux's ``sync_file_range``: it does not wait for the writes, only for room in
    the disk's queue when that is full), so that the disk does not start on a large upload only
    at the fsync (1.4-1.7 s for 1 GiB here, after the last byte is in).
    """

    durable = True  # False for a scratch file (a spool): no writeback and no fsync

    def __init__(self, store: BlobStore):
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        self._lock = fd  # held open, and so locked, until commit or discard
        self._releasing = threading.Lock()
        self.path = pathlib.Path(name)
        try:
            self._file = DirectWriter(name, direct=store.direct)
        except BaseException:
            self.path.unlink(missing_ok=True)
            os.close(fd)
            raise
        self.size = 0
        self.written_back = 0  # bytes whose writeback has been started
        self._hash = hashlib.sha256()
        self._crc = Crc32()  # beside the sha256, in its thread: what downloads are checked by

    def _write_file(self, data: Buffer) -> None:
        self._file.write(data)
        self.size += len(data)
        if self.durable and not self._file.direct and self.size - self.written_back >= WRITEBACK_EVERY:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Starts writing the bytes since the last start to disk, without waiting: only a
        head start for the fsync in :meth:`close`, so a failure here is ignored."""
        if _sync_file_range is None:
            return
        _sync_file_range(self._file.fd, self.written_back, self.size - self.written_back, _SYNC_FILE_RANGE_WRITE)
        self.written_back = self.size

    def sinks(self) -> list[Sink]:
        """The consumers of each chunk, in order, each safe to run in a thread of its own
        (:class:`~pruning_core.transfer.WritePipeline`): the file, and the sha256 with the
        CRC-32 (0.02 s per GiB: no thread of its own)."""
        return [self._write_file, self._digest]

    def _digest(self, data: Buffer) -> None:
        self._hash.update(data)
        self._crc.update(data)

    def write(self, data: bytes) -> None:
        for sink in self.sinks():
            sink(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def crc32(self) -> int:
        """The CRC-32 of the bytes written so far (all of them once the pipeline drained)."""
        return self._crc.value

    def close(self) -> None:
        """Writes what is left to the file (to disk, unless it is scratch) and closes it; the
        file stays locked until commit or discard."""
        self._file.close(fsync=self.durable)

    def _release(self) -> None:
        """Closes the file without writing more, then lets go of its lock."""
        try:
            self._file.abort()
        finally:
            with self._releasing:  # once, whoever calls: a descriptor closed twice may be another's
                fd, self._lock = self._lock, -1
            if fd >= 0:
                os.close(fd)

    def commit(self) -> str:
        """Moves the finished file into place and returns its id (sha256)."""
        self.close()
        sha = self.sha256
        target = self._store.path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, target)
        self._release()
        return sha

    def discard(self) -> None:
        """Removes the file; what was not written yet is dropped (a disk that is full stays
        so no longer than this file's bytes held it)."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._release()


class BlobStore:
    """The artifact store rooted at one directory."""

    def __init__(self, root: os.PathLike | str, direct: bool = True):
        self.root = pathlib.Path(root)
        self.direct = direct  # uploads written past the page cache where the file system allows
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, artifact_id: str) -> pathlib.Path:
        if not is_artifact_id(artifact_id):
            raise ValueError(f"artifact id must be 64 lowercase hex digits, got {artifact_id!r}")
        return self.root / artifact_id[:2] / artifact_id

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def ids(self):
        """Every stored blob's id."""
        for path in self.root.glob("??/*"):
            if is_artifact_id(path.name) and path.parent.name == path.name[:2]:
                yield path.name

    def remove(self, artifact_id: str, min_age_s: float = 60.0, not_before: float = 0.0) -> bool:
        """Deletes a blob no record points to; one younger than ``min_age_s`` is left alone
        (it may have just been written again for a new record), and so is one written before
        ``not_before`` (unix s)."""
        path = self.path(artifact_id)

        def may_go(file: pathlib.Path) -> bool:
            mtime = file.stat().st_mtime
            return time.time() - mtime >= min_age_s and mtime >= not_before

        try:
            if not may_go(path):
                return False
            # Moved aside, then judged again: an upload of the same bytes that replaced the file
            # between the look and the move is young, and goes back instead of being deleted
            # (a check then an unlink lost such files now and then).
            aside = self.tmp_dir / f"{_REMOVING}{artifact_id}-{os.getpid()}-{threading.get_ident()}"
            os.replace(path, aside)
        except FileNotFoundError:
            return False
        try:
            if may_go(aside):
                aside.unlink(missing_ok=True)
                return True
        except FileNotFoundError:
            return False
        _put_back(aside, path)
        return False

    def sweep(self, min_age_s: float = 60.0) -> int:
        """Removes temporary files no live writer holds (their process died mid-upload);
        returns how many. Files younger than ``min_age_s`` are left to their writer."""
        for aside in self.tmp_dir.glob(f"{_REMOVING}*"):  # a remove() that died midway: put back
            try:
                moved_s = time.time() - aside.stat().st_ctime  # when it was moved aside
            except FileNotFoundError:
                continue
            if moved_s >= 60.0 and is_artifact_id(name := aside.name.removeprefix(_REMOVING)[:64]):
                _put_back(aside, self.path(name))  # the next retention judges it again
        return sweep_unlocked(self.tmp_dir.glob("upload-*"), min_age_s)

    def put_file(self, source: os.PathLike | str) -> Stored:
        """Copies a local file into the store; returns its id, size and CRC-32."""
        writer = self.writer()
        try:
            with open(source, "rb") as src:
                while chunk := src.read(1 << 20):
                    writer.write(chunk)
            return Stored(writer.commit(), writer.size, writer.crc32)
        except BaseException:
            writer.discard()
            raise


_REMOVING = "removing-"  # a blob moved aside by remove(), judged again before it is deleted


def _put_back(aside: pathlib.Path, path: pathlib.Path) -> None:
    """Puts a blob moved aside back in its place, unless the same bytes are there again."""
    try:
        os.link(aside, path)  # never over a file put there since: the same bytes, and younger
    except FileExistsError:
        pass
    except FileNotFoundError:
        return  # gone meanwhile (another pass put it back)
    except OSError:  # a file system without hard links (some FUSE and SMB mounts)
        if not path.exists():
            os.replace(aside, path)
            return
    aside.unlink(missing_ok=True)


def sweep_unlocked(paths, min_age_s: float = 60.0) -> int:
    """Removes each file or directory of ``paths`` whose lock no process holds (for a
    directory, the lock is on its ``.lock`` file) and that is older than ``min_age_s``."""
    removed = 0
    for path in paths:
        lock = path / ".lock" if path.is_dir() else path
        try:
            if time.time() - lock.stat().st_mtime < min_age_s:
                continue
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        except BlockingIOError:
            pass  # a live writer holds it
        finally:
            os.close(fd)
    return removed
