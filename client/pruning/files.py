"""Large files written past the page cache, where the file system allows it.

A buffered write copies every byte into the page cache, and a page the kernel has not used for
a while costs far more than the copy: on a virtual machine whose host takes back what the guest
frees, a new GiB costs 0.3 to 1.6 s of CPU (``bench/bench_page_cache.py``), as much as hashing
it. :class:`DirectWriter` collects the bytes in one aligned buffer and writes it with
``O_DIRECT``: the disk reads the buffer itself, and a GiB costs about 0.13 s of CPU here
whatever the page cache holds. The bytes are not in the page cache afterwards (a reader reads
them from the disk).

Where ``O_DIRECT`` is refused (tmpfs, some FUSE file systems, a platform without it) or the
file starts at an offset that is not aligned (a resumed download), it writes as a plain file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import threading
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no O_DIRECT either, so plain writes only
    fcntl = None  # type: ignore[assignment]

ALIGN = 4096  # O_DIRECT's alignment of offsets, lengths and buffers on every Linux disk
BLOCK = 4 << 20  # bytes per write: large enough to keep the disk busy, small in memory
_O_DIRECT: int = getattr(os, "O_DIRECT", 0) if fcntl is not None else 0


class DirectWriter:
    """Writes ``path`` from its current end (a new file: from 0) in ``BLOCK``-byte writes
    through ``O_DIRECT``, or as a plain file where that is not possible; :meth:`close` writes
    what is left (the unaligned tail as a plain write) and, with ``fsync``, makes it durable;
    :meth:`abort` closes without writing more. The file always holds exactly the bytes written
    so far, in order, even after a failed write (what a write could not put in the file stays
    collected, and a later call tries it again from where it stopped). One lock orders the
    calls: a close from another thread waits for a write under way, and a write after the close
    raises ValueError (never a write to a file descriptor reused since)."""

    def __init__(self, path: os.PathLike[str] | str, *, append: bool = False, direct: bool = True) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (0 if append else os.O_TRUNC) | getattr(os, "O_CLOEXEC", 0)
        self._fd = -1
        self._lock = threading.Lock()
        self.direct = False
        if direct and _O_DIRECT:
            try:
                self._fd = os.open(path, flags | _O_DIRECT, 0o644)
                self.direct = True
            except OSError as error:
                if error.errno != errno.EINVAL:  # EINVAL: this file system refuses O_DIRECT
                    raise
        if self._fd < 0:
            self._fd = os.open(path, flags, 0o644)
        try:
            self.size = os.lseek(self._fd, 0, os.SEEK_END)  # bytes in the file; the writes start there
            if self.direct and self.size % ALIGN:
                self._plain()
            self._buffer: mmap.mmap | None = mmap.mmap(-1, BLOCK) if self.direct else None  # page-aligned
        except BaseException:
            os.close(self._fd)
            raise
        self._fill = 0  # bytes collected in the buffer, not yet in the file

    @property
    def fd(self) -> int:
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Writes ``data`` (collected until a block is full when writing directly)."""
        with self._lock:
            if self._fd < 0:
                raise ValueError("write to a closed file")
            view = memoryview(data).cast("B")
            count = len(view)
            if self._buffer is None:
                while view:  # plain: each byte goes to the file as it is taken
                    written = os.write(self._fd, view)
                    self.size += written
                    view = view[written:]
                return count
            while view:
                take = min(len(view), BLOCK - self._fill)
                self._buffer[self._fill : self._fill + take] = view[:take]
                self._fill += take
                view = view[take:]
                if self._fill == BLOCK:
                    self._flush(BLOCK)
            return count

    def _flush(self, length: int) -> None:
        """Writes the buffer's first ``length`` bytes (a multiple of ALIGN while writing
        directly); whatever was written leaves the buffer, even when a write then fails."""
        assert self._buffer is not None
        done = 0
        try:
            with memoryview(self._buffer) as whole:
                while done < length:
                    try:
                        written = os.write(self._fd, whole[done:length])
                    except OSError as error:
                        if error.errno != errno.EINVAL or not self.direct:
                            raise
                        # accepted at open, refused at the write (some FUSE file systems)
                        self._plain()
                        continue
                    done += written
                    self.size += written
        finally:
            if done:
                self._fill -= done
                if self._fill:
                    self._buffer.move(0, done, self._fill)

    def _plain(self) -> None:
        """From now on, plain writes (the page cache)."""
        assert fcntl is not None  # O_DIRECT is used only where fcntl is
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
        self.direct = False

    def close(self, *, fsync: bool = False) -> None:
        """Writes what is collected (its aligned part directly, the rest plainly), fsyncs
        when asked, and closes the file, which is closed even when a write fails. Safe to call
        again."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self._fill and self.direct:
                    self._flush(self._fill - self._fill % ALIGN)
                if self._fill:
                    if self.direct:
                        self._plain()
                    self._flush(self._fill)
                if fsync:
                    os.fsync(self._fd)
            finally:
                self._close()

    def abort(self) -> None:
        """Closes the file without writing what is collected (a file being thrown away)."""
        with self._lock:
            if self._fd >= 0:
                self._close()

    def _close(self) -> None:
        fd, self._fd, self._fill = self._fd, -1, 0
        try:
            os.close(fd)
        finally:
            if self._buffer is not None:
                # a view of it may live on in an error's traceback: then it goes with that
                with contextlib.suppress(BufferError):
                    self._buffer.close()
                self._buffer = None

    def __enter__(self) -> DirectWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)


def _libc_calls() -> Any:
    """libc's mmap, mincore and munmap, typed; None where there is no such libc."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's among them
        calls = libc.mmap, libc.mincore, libc.munmap
    except (OSError, AttributeError, TypeError):
        return None
    calls[0].argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    calls[0].restype = ctypes.c_void_p
    calls[1].argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    calls[1].restype = ctypes.c_int
    calls[2].argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    calls[2].restype = ctypes.c_int
    return calls


_LIBC: Any = _libc_calls() if _O_DIRECT else None
_MAP_FAILED = ctypes.c_void_p(-1).value
_LOW_BIT = bytes(b & 1 for b in range(256))


class UncachedReader:
    """Positional reads of one file, from any thread, that copy what the page cache holds and
    read the rest past it (``O_DIRECT``). A file written with :class:`DirectWriter` is not in
    the page cache, and reading it through the cache costs as much CPU as filling it (up to
    2-3 s a GiB on a virtual machine whose host takes back what the guest frees, against 0.1 s
    read directly). Before each read, ``mincore`` on a mapping of the file (never touched, so
    it costs address space only) says whether the range is all in the page cache: then it is
    copied from there, otherwise read directly, aligned around the range asked for. Where the
    file system or the platform refuses any of this, every read is a plain one.

    :meth:`close` may come while reads run in other threads (a download cancelled midway: its
    reads cannot be stopped): the file is closed once the last of them ends, and a read that
    starts after the close raises ValueError."""

    def __init__(self, path: os.PathLike[str] | str, *, direct: bool = True) -> None:
        cloexec = getattr(os, "O_CLOEXEC", 0)
        self._lock = threading.Lock()
        self._reading = 0  # reads under way
        self._closing = False
        self.fd = os.open(path, os.O_RDONLY | cloexec)
        self.direct_fd = -1
        self._map, self._mapped = 0, 0
        try:
            self.size = size = os.fstat(self.fd).st_size  # at the open
            if direct and _LIBC is not None and size:
                address = _LIBC[0](None, size, mmap.PROT_READ, mmap.MAP_SHARED, self.fd, 0)
                if address not in (None, _MAP_FAILED):
                    self._map, self._mapped = address, size
                    try:
                        self.direct_fd = os.open(path, os.O_RDONLY | _O_DIRECT | cloexec)
                    except OSError as error:
                        if error.errno != errno.EINVAL:  # EINVAL: this file system refuses O_DIRECT
                            raise
        except BaseException:
            self.close()
            raise
        self.direct = self.direct_fd >= 0

    @staticmethod
    def buffer_size(size: int) -> int:
        """The buffer :meth:`read` needs for reads of ``size`` bytes at any offset."""
        return -(-size // ALIGN) * ALIGN + ALIGN

    def cached(self, size: int, offset: int) -> bool:
        """Whether every page of the range (within the file) is in the page cache."""
        start = offset - offset % mmap.PAGESIZE
        end = min(offset + size, self._mapped)
        if end <= start:
            return True  # nothing to read: the plain read says so
        pages = (ctypes.c_ubyte * (-(-(end - start) // mmap.PAGESIZE)))()
        if _LIBC[1](self._map + start, end - start, pages) != 0:
            return True  # cannot tell: a plain read is always right
        return b"\0" not in bytes(pages).translate(_LOW_BIT)

    def read(self, size: int, offset: int, buffer: mmap.mmap) -> memoryview:
        """Up to ``size`` bytes from ``offset`` (fewer at the end of the file) as a view of
        ``buffer`` (of at least :meth:`buffer_size` bytes), valid until it is used again."""
        with self._lock:
            if self._closing:
                raise ValueError("read of a closed file")
            self._reading += 1
        try:
            return self._read(size, offset, memoryview(buffer))
        finally:
            with self._lock:
                self._reading -= 1
                last = self._closing and not self._reading
            if last:
                self._close()

    def _read(self, size: int, offset: int, whole: memoryview) -> memoryview:
        if self.direct and not self.cached(size, offset):
            start = offset - offset % ALIGN
            end = -(-(offset + size) // ALIGN) * ALIGN
            try:
                got = os.preadv(self.direct_fd, [whole[: end - start]], start)
            except OSError as error:
                if error.errno != errno.EINVAL:  # accepted at open, refused at the read
                    raise
                self.direct = False  # its descriptor stays open until close: another thread may read it
            else:
                skip = offset - start
                return whole[skip : max(skip, min(got, skip + size))]
        got = os.preadv(self.fd, [whole[:size]], offset)
        return whole[:got]

    def close(self) -> None:
        """Closes the file now, or once the reads under way have ended. Safe to call again."""
        with self._lock:
            self._closing = True
            if self._reading:
                return
        self._close()

    def _close(self) -> None:
        with self._lock:  # once: by close or by the last read, whichever comes second
            if self._map:
                address, self._map = self._map, 0
                _LIBC[2](address, self._mapped)
            for name in ("direct_fd", "fd"):
                fd = getattr(self, name)
                if fd >= 0:
                    setattr(self, name, -1)
                    os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None and getattr(self, "fd", -1) >= 0:
            self._closing = True
            self._close()
