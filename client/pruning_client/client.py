"""The SDK's client: uploads, jobs, downloads over gRPC.

The private helpers here (channel options, credentials, request builders, the file sides of
uploads and downloads) are shared with the asyncio client in :mod:`pruning_client.aio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import os
import pathlib
import queue
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Generic, ParamSpec, TypeVar

import grpc

try:
    import fcntl
except ImportError:  # Windows: no flock; downloads of one artifact to one file are not serialized
    fcntl = None  # type: ignore[assignment]

from pruning import wire
from pruning.checksum import Crc32, file_crc32
from pruning.files import DirectWriter
from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc

from .exceptions import DataLoss, DeadlineExceeded, IntegrityError, InvalidArgument, OutOfRange, Unavailable, rpc_errors
from .job import UNBOUNDED_WAIT_S, JobHandle, _is_directory
from .results import JobPlan
from .sources import DatasetSource, ModelSource, dataset_file, model_file
from .sweeps import SweepHandle
from .sweeps import create_request as create_sweep_request
from .sweeps import list_request as list_sweeps_request

__all__ = ["Client", "ClientOptions", "DownloadProgress", "UploadProgress"]

CHUNK = 1024 * 1024
VERIFY_MODES = ("crc32", "sha256")  # ClientOptions.verify
UPLOAD_FLOOR_RATE = 256 * 1024
"""Bytes per second an upload is granted at the least (about 2 Mbit/s): its deadline is the
client's timeout plus its size at this rate, so a stalled server ends it with
DEADLINE_EXCEEDED while a large file on a slow link still arrives (1 GiB gets 68 minutes)."""
_RETRY_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                # Calls safe to send again: reads, cancels, and creates under an idempotency key
                # (the SDK always sends one). Not an upload (a stream) nor a delete (a second try
                # of one that went through would answer NOT_FOUND).
                "name": [
                    *(
                        {"service": "pruning.v1.PruningService", "method": m}
                        for m in ("CreateJob", "GetJob", "ListJobs", "CancelJob", "GetArtifact", "ListArtifacts")
                    ),
                    *(
                        {"service": "pruning.v1.SweepService", "method": m}
                        for m in ("CreateSweep", "GetSweep", "ListSweeps", "CancelSweep")
                    ),
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.service_config", _RETRY_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]

UploadProgress = Callable[[int], None]
"""Called with the byte count of each chunk sent."""
DownloadProgress = Callable[[int, int], None]
"""Called with the byte count of each chunk received and the artifact's total size."""

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


def _api_key_problem(api_key: str | None) -> str | None:
    """Why ``api_key`` cannot be sent as gRPC metadata (printable ASCII only), or None."""
    for i, c in enumerate(api_key or ""):
        if not " " <= c <= "~":
            return f"must be printable ASCII (it is sent as gRPC metadata); character {i + 1} is not"
    return None


def _rpc(method: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with rpc_errors():
            return method(*args, **kwargs)

    return wrapper


# gRPC's own target schemes (unix:/path, dns:///host:port, ...): passed through as they are
_GRPC_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:", "xds:", "passthrough:")


def _target_problem(target: str, tls: bool) -> str | None:
    """Why ``target`` is not a server address gRPC would reach as meant, or None. A host
    without a port is taken with --tls (gRPC dials 443, as a TLS endpoint behind a proxy is)."""
    if target.startswith(_GRPC_SCHEMES):
        return None
    if "://" in target:
        return f"takes host:port, not a URL (got {target!r}; for TLS, turn TLS on: --tls, tls=True)"
    host, colon, port = target.rpartition(":")
    if colon and host and not host.endswith(":") and port.isdigit():
        return None  # host:port, [v6]:port
    portless = not colon or host.endswith(":") or target.endswith("]")  # "localhost", "::1", "[::1]"
    if portless and target:
        return (
            None
            if tls
            else f"takes host:port (got {target!r}: without a port gRPC dials 443; the server's default is 50051)"
        )
    return f"takes host:port (got {target!r})"


MAX_TIMEOUT_S = UNBOUNDED_WAIT_S  # the longest deadline of one call: gRPC takes none farther off


@dataclass
class ClientOptions:
    """Options of a :class:`Client` (and of :class:`pruning_client.aio.AsyncClient`)."""

    api_key: str | None = None
    """Sent as ``x-api-key``; maps to the tenant on the server."""
    tls: bool = False
    """Use TLS (with the system roots unless ``root_certificates`` is given)."""
    root_certificates: bytes | None = None
    """PEM roots for TLS."""
    timeout: float = 30.0
    """Deadline in seconds of each unary call; an upload gets this plus its size at
    ``UPLOAD_FLOOR_RATE``."""
    channel_options: list[tuple[str, Any]] = field(default_factory=lambda: list(_CHANNEL_OPTIONS))
    """gRPC channel arguments (retry policy for the unary calls, message size)."""
    hash_first: bool = True
    """Hash a file before uploading it and announce its sha256 in the upload's header: content
    the tenant already holds (of the same kind) is answered after the header and not sent
    again, and a server on S3 writes it straight to its final key (no copy once it arrived).
    False sends at once and checks on the way (see ``verify``), which ends a first upload of a
    large file sooner (one pass over the file instead of two)."""
    verify: str = "crc32"
    """How a download, and an upload checked on the way, is checked before it counts:
    ``"crc32"`` compares the CRC-32 of the bytes received (or sent) with the one the server
    recorded beside the sha256 it computed when it stored them (0.02 s of CPU per GiB);
    ``"sha256"`` hashes them here and compares with the artifact's id, end to end (about 0.6 s
    per GiB). An artifact whose record holds no CRC-32 (stored by an older server) is checked
    by its sha256 either way."""

    def __post_init__(self) -> None:
        problem = _api_key_problem(self.api_key)
        if problem is not None:
            raise ValueError(f"api_key {problem}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {self.verify!r}")
        if not 0 < self.timeout <= MAX_TIMEOUT_S:  # NaN fails this too; gRPC takes no deadline so far off
            raise ValueError(f"timeout must be in (0, {MAX_TIMEOUT_S:.0f}] seconds, got {self.timeout!r}")

    def check_target(self, target: str) -> None:
        """ValueError when gRPC would not reach ``target`` as meant (a URL, a host without a
        port and without TLS): said now rather than as UNAVAILABLE, retried, on the first call."""
        if problem := _target_problem(target, self.tls):
            raise ValueError(f"target {problem}")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the API key, if any."""
        return (("x-api-key", self.api_key),) if self.api_key else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, or None for a plaintext channel."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)


PIPELINE = 8  # chunks read ahead of an upload's sender / received ahead of a download's writer
_END = object()


class _Ahead(Generic[_T]):
    """Iterates ``items`` in a thread of its own, at most ``PIPELINE`` items ahead of the
    consumer; an error there is raised here. Leaving the ``with`` stops the thread."""

    def __init__(self, items: Iterator[_T]) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(PIPELINE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upload-reader", daemon=True)

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - raised in the consumer
            self._put(exc)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # a generator left early runs its cleanup here, in this thread

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self) -> Iterator[_T]:
        self._thread.start()
        return self._iterate()

    def _iterate(self) -> Iterator[_T]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._drain()  # a put waiting for room returns at once
        self._thread.join()
        # a consumer still waiting for an item (gRPC's sender of a cancelled upload) ends
        self._drain()
        self._queue.put_nowait(_END)

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()


class _Behind:
    """Calls each of ``consumers`` on every item put, each in a thread of its own behind a
    queue of at most ``PIPELINE`` items (so writing the file and hashing overlap with each
    other and with receiving); leaving the ``with`` waits for the rest and raises the first
    error, if any."""

    def __init__(self, *consumers: Callable[[bytes | memoryview], object]) -> None:
        self._consumers = consumers
        self._queues: list[queue.Queue[Any]] = [queue.Queue(PIPELINE) for _ in consumers]
        self._error: BaseException | None = None  # the first consumer's error
        self._error_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"sdk-transfer-{i}", daemon=True)
            for i in range(len(consumers))
        ]

    def _run(self, index: int) -> None:
        consume, items = self._consumers[index], self._queues[index]
        while (item := items.get()) is not _END:
            if self._error is None:
                try:
                    consume(item)
                except BaseException as exc:  # noqa: BLE001 - raised in the producer
                    with self._error_lock:
                        self._error = self._error or exc

    def put(self, item: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        for items in self._queues:
            items.put(item)

    async def aput(self, item: bytes | memoryview) -> None:
        """:meth:`put` from an event loop: waits off the loop only when a queue is full."""
        if self._error is not None:
            raise self._error
        for items in self._queues:
            try:
                items.put_nowait(item)
            except queue.Full:
                await asyncio.to_thread(items.put, item)

    def __enter__(self) -> Callable[[bytes | memoryview], None]:
        for thread in self._threads:
            thread.start()
        return self.put

    def __exit__(self, *exc: object) -> None:
        for items in self._queues:
            items.put(_END)
        for thread in self._threads:
            thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


def _ignore(data: bytes | memoryview) -> None:
    """What an upload hashed before does with each chunk it sends (:meth:`_Upload.requests`)."""


def _file_sha256(path: pathlib.Path) -> hashlib._Hash:
    """The sha256 of a file, read in chunks into one buffer."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest


# The server's refusals of bytes other than the header announced (the file's size and, hashed
# first, its sha256): the file changed under the upload.
_CHANGED = re.compile(r"does not match the announced sha256|announced \d+ bytes, received \d+")


# flock's errors on a file system that does not lock: not worth failing a download for
_NO_FLOCK = frozenset(
    getattr(errno, name) for name in ("ENOLCK", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "EINVAL") if hasattr(errno, name)
)


def _stamp(info: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is written or replaced: its inode, size and modification time
    (not its change time, which a hard link, a chmod or an extended attribute set by another
    program moves without touching a byte)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class _Upload:
    """The file side of an upload. The id the server answers (its sha256 of what it received)
    is checked against the file's: hashed before the call (:meth:`hash`, then announced in the
    header, ``ClientOptions.hash_first``) or as it is sent. A file that cannot be read raises
    its OSError here, before any call: read in the request stream, gRPC would only report
    UNKNOWN."""

    def __init__(self, path: os.PathLike[str] | str, progress: UploadProgress | None, verify: str = "crc32") -> None:
        self.path = pathlib.Path(path)
        self.progress = progress
        self.verify = verify
        self.digest = hashlib.sha256()
        self.crc = Crc32()  # of the bytes sent, with verify "crc32"
        self.announced = ""  # the sha256 hashed before the call, announced in the header
        self.sent = 0  # bytes reported to ``progress``
        self._lock = threading.Lock()
        self.read_error: OSError | None = None
        self.progress_error: BaseException | None = None  # raised by ``progress``
        self.change_error: IntegrityError | None = None  # the file changed while it was read
        # O_NONBLOCK: a FIFO nobody writes is refused below, not waited on at the open
        # (Unix only, as O_CLOEXEC: Windows has no FIFOs to wait on, and no such constants)
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
        if not stat.S_ISREG(info.st_mode):
            # a pipe (`<(...)`, /dev/stdin from a pipe) or a device: the hash would take its bytes
            # before the upload reads it again (then "empty upload"), and /dev/zero never ends
            raise OSError(
                errno.EINVAL,
                "not a regular file (an upload reads the file twice, to hash it and to send it: save it to a file first)",
                str(self.path),
            )
        self.size = info.st_size
        self.stamp = _stamp(info)

    def hash(self) -> None:
        """Hashes the whole file before the call, for the header to announce."""
        self.digest = _file_sha256(self.path)
        self.announced = self.digest.hexdigest()

    def header(self) -> pb.UploadRequest:
        return pb.UploadRequest(header=pb.UploadHeader(filename=self.path.name, size=self.size, sha256=self.announced))

    def chunk(self, data: bytes) -> bytes:
        """The serialized ``UploadRequest`` of a chunk (:func:`pruning.wire.upload_chunk`)."""
        self._report(len(data))
        return wire.upload_chunk(data)

    def _report(self, count: int) -> None:
        """Progress, never past the file's size (chunks read ahead of an early answer)."""
        with self._lock:
            count = min(count, self.size - self.sent)
            self.sent += count
        if count and self.progress:
            try:
                self.progress(count)
            except BaseException as error:  # gRPC would report only UNKNOWN: the call raises this instead
                self.progress_error = error
                raise

    def requests(self) -> Iterator[pb.UploadRequest | bytes]:
        """The header, then the file's chunks; unless hashed before, checked on the way: the
        CRC-32 as each chunk is read, or with verify "sha256" the sha256 in a thread beside the
        reader, complete once the last request is taken."""
        yield self.header()
        if self.announced:
            hashing: contextlib.AbstractContextManager[Callable[[bytes], object]] = contextlib.nullcontext(_ignore)
        elif self.verify == "sha256":
            hashing = _Behind(self.digest.update)
        else:
            hashing = contextlib.nullcontext(self.crc.update)
        read = 0
        with open(self.path, "rb") as f, hashing as digest:
            while data := self._read(f):
                digest(data)
                read += len(data)
                if (
                    not self.announced  # hashed first: the server's check of the announced sha256 sees it
                    and read >= self.size
                    and self.change_error is None
                    and _stamp(os.fstat(f.fileno())) != self.stamp
                ):
                    # rewritten in place meanwhile (a checkpoint saved over it): the bytes read may
                    # be some of each version, which no check of the bytes sent would see. Said
                    # before the last bytes go (the server stores an upload once it has the size
                    # the header announced), so the call ends short of them: nothing is stored.
                    self.change_error = self.changed()
                    raise self.change_error
                yield self.chunk(data)

    def _read(self, f: IO[bytes]) -> bytes:
        try:
            return f.read(CHUNK)
        except OSError as error:  # gRPC would report only UNKNOWN: the call raises this instead
            self.read_error = error
            raise

    def raise_read_error(self, error: grpc.RpcError) -> None:
        """After a failed call: the file's own read error, or what the progress callback raised,
        when that is what ended it; an IntegrityError when the file changed under the upload (the server refused the
        bytes for not matching the size or the sha256 the header announced)."""
        if self.read_error is not None:
            raise self.read_error
        if self.progress_error is not None:
            raise self.progress_error
        if self.change_error is not None:
            raise self.change_error from error
        details = error.details() if callable(getattr(error, "details", None)) else ""  # grpc.aio's too
        if _CHANGED.search(details or ""):
            raise self.changed() from error

    def changed(self) -> IntegrityError:
        return IntegrityError(
            f"{self.path} changed while it was uploaded: it is no longer the {self.size} bytes "
            f"{'hashing to ' + self.announced + ' ' if self.announced else ''}it was when the upload began; "
            "nothing was stored"
        )

    def pipelined(self) -> Generator[pb.UploadRequest | bytes, None, None]:
        """:meth:`requests`, read, hashed and built ahead by a thread of their own (at most
        ``PIPELINE`` chunks), so that gRPC sends one chunk while the next is prepared."""
        with _Ahead(self.requests()) as ahead:
            yield from ahead

    def deadline(self, timeout: float) -> float:
        """Seconds the upload call is given: ``timeout`` plus the file at ``UPLOAD_FLOOR_RATE``."""
        return timeout + self.size / UPLOAD_FLOOR_RATE

    def check(self, artifact: pb.Artifact) -> pb.Artifact:
        """The answer, once its id is the file's sha256 (hashed before or on the way), or the
        bytes it stored are the ones sent (their size and CRC-32, checked on the way). An
        announced upload the server answered after the header (it holds the content) reports
        its unsent bytes as sent."""
        if self.announced:
            expected = self.announced
        elif self.verify == "sha256":
            expected = self.digest.hexdigest()  # complete: the last chunk taken
        elif artifact.HasField("crc32"):
            if (artifact.size, artifact.crc32) != (self.size, self.crc.value):
                raise IntegrityError(
                    f"the server stored {artifact.size} bytes with CRC-32 {artifact.crc32:08x} but {self.path} "
                    f"sent {self.size} bytes with CRC-32 {self.crc.value:08x}"
                )
            expected = artifact.id
        else:  # a server that records no CRC-32: the file's sha256, read again
            expected = _file_sha256(self.path).hexdigest()
        if artifact.id != expected:
            raise IntegrityError(f"the server stored {artifact.id} but {self.path} hashes to {expected}")
        self._report(self.size)
        return artifact


def make_dirs(path: pathlib.Path) -> list[pathlib.Path]:
    """``path`` and its missing parents created; returns those this call created, outermost
    first (only those: ``new/../old/sub`` names ``old`` through a folder not made yet)."""
    missing = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    made = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # made meanwhile, or reached through ".." once its parent was made
            continue
        made.append(directory)
    path.mkdir(parents=True, exist_ok=True)  # raises when a file is in the way
    return made


def remove_empty_dirs(made: list[pathlib.Path]) -> None:
    """Removes the directories :func:`make_dirs` made, innermost first, while they are empty:
    a command that failed leaves nothing behind it."""
    for directory in reversed(made):
        try:
            directory.rmdir()
        except OSError:  # holds something (or went): it and its parents stay
            return


def _regular_file(target: pathlib.Path) -> pathlib.Path:
    """Where a download of ``target`` writes: the file a symbolic link names (the link stays),
    never over a device (``/dev/null``), a FIFO or a socket (refused: the rename would replace
    it by a file)."""
    if target.is_symlink():
        try:
            target = target.resolve(strict=False)
        except (RuntimeError, OSError) as error:  # a loop of links (Python 3.11: RuntimeError)
            raise OSError(errno.ELOOP, "too many levels of symbolic links", str(target)) from error
    if target.exists() and not target.is_file():
        raise OSError(errno.EINVAL, "not a regular file (a download writes a file, or into a directory)", str(target))
    return target


# A download cut midway (UNAVAILABLE: a connection reset, a server restarted, the object store
# blinking; DEADLINE_EXCEEDED: a stall on either side ended it) is resumed from its partial file
# this many times, after 0.5, 1 and 2 s, while each call brings more bytes.
DOWNLOAD_RESUMES = 3
RESUME_BACKOFF_S = 0.5


class _Download:
    """The file side of a resumable download: where it goes, the partial file it resumes (one
    per artifact, ``<dest>.<artifact_id[:16]>.part``), and the check before the move: the
    CRC-32 the server recorded for the artifact, or its sha256 (``ClientOptions.verify``).
    A directory ``dest`` (an existing one, or one ending with a separator) is created if missing,
    and so is the directory of a file ``dest``, as the CLI's ``-o`` does."""

    def __init__(
        self,
        artifact_id: str,
        dest: os.PathLike[str] | str,
        *,
        filename: str | None,
        resume: bool,
        verify: str = "crc32",
    ) -> None:
        if not (isinstance(artifact_id, str) and re.fullmatch(r"[0-9a-f]{64}", artifact_id)):
            # said before any file or call, as the server would: no name is made of it
            raise InvalidArgument(
                f"artifact_id: must be 64 lowercase hex digits (a sha256), got {str(artifact_id)[:80]!r}",
                code=grpc.StatusCode.INVALID_ARGUMENT,
                field_violations=[("artifact_id", "must be 64 lowercase hex digits")],
            )
        self.artifact_id = artifact_id
        self.verify = verify
        self.expected_crc: int | None = None  # the server's, from the chunks
        self.total_size: int | None = None  # the artifact's, from the chunks
        target = pathlib.Path(dest)
        if _is_directory(dest):
            # Only the last component of a name the server gave: it never becomes a path.
            name = pathlib.PurePosixPath((filename or "").replace("\\", "/")).name
            target = target / (name if name not in ("", ".", "..") else artifact_id)
        target = _regular_file(target)
        self.made = make_dirs(target.parent)
        self.dest = target
        self.part = target.with_name(f"{target.name}.{artifact_id[:16]}.part")
        if self.part.is_symlink() or (self.part.exists() and not self.part.is_file()):
            # not a partial download of ours (a link, a FIFO that would block the open): replaced
            self.part.unlink()
        self.resume = resume
        self._lock_fd = -1  # the partial file, held under an exclusive flock (:meth:`lock`)
        self._unlocked = fcntl is None  # no flock here (Windows, some mounts): the partial file is this call's
        self.offset = self.part.stat().st_size if resume and self.part.exists() else 0
        # the check's state over those bytes: read by :meth:`refresh`, once the file is locked
        self.digest, self.hashing, self.crc = hashlib.sha256(), verify == "sha256", Crc32()

    def lock(self, *, blocking: bool = True) -> bool:
        """Takes the partial file (created if missing) under an exclusive ``flock`` until
        :meth:`release`: a second download of the same artifact to
        the same file (another process, a parallel pipeline step, another thread) waits for this
        one and then finds the file in place (:meth:`present`), instead of writing into the same
        partial file, and, once the first moved it into place, into the checked file itself.
        False, without waiting, when another download holds it and ``blocking`` is False. Then
        :meth:`refresh` reads what the partial file holds."""
        if fcntl is not None and self._lock_fd < 0:
            while True:
                # never through a link, nor blocking on a FIFO, put there since
                flags = os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK
                fd = os.open(self.part, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o644)
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                    except BlockingIOError:
                        os.close(fd)
                        return False
                    except OSError as error:
                        if error.errno not in _NO_FLOCK:
                            raise
                        # a file system without flock (NFS without lockd, Lustre without -o flock,
                        # some FUSE and SMB mounts): downloads go on unserialized, as on Windows
                        os.close(fd)
                        self._unlocked = True
                        return True
                    if os.path.samestat(os.fstat(fd), os.stat(self.part)):
                        self._lock_fd = fd
                        break
                except FileNotFoundError:
                    pass  # moved into place (or removed) by the download this one waited for
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)  # not the partial file at that name now: take the one there
        return True

    def refresh(self) -> None:
        """Once locked: resumes from what the partial file holds now (another download may have
        written it, or moved it into place, while this one waited)."""
        self.offset = self.part.stat().st_size if self.resume and self.part.exists() else 0
        self._checked_from_part()

    def release(self) -> None:
        """Lets the next download of the partial file (or of the file moved into place) go on."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)  # the flock goes with it

    def _checked_from_part(self) -> None:
        """The check's state over the ``offset`` bytes the partial file holds."""
        self.digest = hashlib.sha256()
        self.hashing = self.verify == "sha256"  # whether ``digest`` follows every byte
        self.crc = Crc32()
        if self.offset:
            if self.verify == "sha256":
                self.digest = _file_sha256(self.part)
            else:
                self.crc = Crc32(file_crc32(self.part))

    def present(self, progress: DownloadProgress | None) -> bool:
        """Whether ``dest`` already holds the artifact (a file whose sha256 is its id): then
        nothing is downloaded, a partial file of it is removed, and ``progress`` hears the
        whole size at once."""
        try:
            if not self.dest.is_file() or _file_sha256(self.dest).hexdigest() != self.artifact_id:
                return False
        except OSError:  # unreadable: downloaded and replaced, as before
            return False
        self.part.unlink(missing_ok=True)
        if progress:
            size = self.dest.stat().st_size
            progress(size, size)
        return True

    def request(self) -> pb.DownloadArtifactRequest:
        return pb.DownloadArtifactRequest(artifact_id=self.artifact_id, offset=self.offset)

    def open(self) -> DirectWriter:
        """The partial file, written past the page cache where the file system allows it
        (:mod:`pruning.files`: a GiB costs the SDK a tenth of the CPU on a cold cache)."""
        return DirectWriter(self.part, append=bool(self.offset))

    def drop_after(self, error: BaseException) -> None:
        """After a failed call: a partial file that received nothing (NOT_FOUND, a refused key)
        is removed, as there is nothing to resume, and so is one whose bytes came from a store
        that lost or changed them (DATA_LOSS: resumed after the artifact is stored again, it
        would keep them); so are the directories made for it while they are empty. Any other
        stays for the retry."""
        with contextlib.suppress(OSError):
            # only a partial file of its own: one another download holds is that one's
            mine = self._lock_fd >= 0 or self._unlocked
            if mine and (isinstance(error, DataLoss) or self.part.stat().st_size == 0):
                self.part.unlink()
        remove_empty_dirs(self.made)

    def reopen(self) -> bool:
        """After a call that ended midway: resumes from what the partial file holds now (its
        hash read again: the file and the hash threads may have stopped a chunk apart). False
        when it holds nothing more than before (no progress: the error stands)."""
        before = self.offset
        self.offset = self.part.stat().st_size if self.part.exists() else 0
        self._checked_from_part()
        return self.offset > before

    def restart(self) -> bool:
        """After OUT_OF_RANGE: the partial file is longer than the artifact, so it is removed
        and the download starts again from 0. False when nothing was resumed (the error stands)."""
        if not self.offset:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self.part, 0)  # emptied, not removed: the same file stays locked (:meth:`lock`)
        self.offset = 0
        self._checked_from_part()
        return True

    def behind(self, f: DirectWriter) -> _Behind:
        """What takes each chunk behind the receiver: the file's writer, and the sha256 in a
        thread of its own when that is the check (the CRC-32 is computed in :meth:`take`, as
        each chunk arrives: 20 µs a MiB)."""
        return _Behind(f.write, self.digest.update) if self.verify == "sha256" else _Behind(f.write)

    def take(self, chunk: wire.Chunk) -> bytes | memoryview:
        """On the receiver, each chunk: its bytes, once counted in the CRC-32 and the
        artifact's CRC-32 and size noted."""
        if chunk.crc32 is not None:
            if self.expected_crc is not None and chunk.crc32 != self.expected_crc:
                raise IntegrityError(
                    f"the server sent two CRC-32 for {self.artifact_id}: {self.expected_crc:08x} and {chunk.crc32:08x}"
                )
            self.expected_crc = chunk.crc32
        elif self.expected_crc is None and not self.hashing:
            # a record without a CRC-32 (an older server stored it): the sha256 instead, from
            # here on as chunks arrive (rarely: not worth a thread), the partial file's first
            self.digest = _file_sha256(self.part) if self.offset else hashlib.sha256()
            self.hashing = True
        self.total_size = chunk.total_size
        if self.verify != "sha256":
            self.crc.update(chunk.data)
            if self.hashing:
                self.digest.update(chunk.data)
        return chunk.data

    def receive(self, chunks: Iterator[wire.Chunk], progress: DownloadProgress | None) -> None:
        """Writes and hashes ``chunks`` into the partial file, each in a thread of its own
        behind a queue of at most ``PIPELINE`` chunks, while this thread receives the next ones."""
        with self.named_errors(), self.open() as f, self.behind(f) as put:
            for chunk in chunks:
                data = self.take(chunk)
                put(data)
                if progress:
                    progress(len(data), chunk.total_size)

    @contextlib.contextmanager
    def named_errors(self) -> Iterator[None]:
        """A write's error (a full disk, a file size limit) names the partial file, which stays
        for a retry to resume: a bare "[Errno 28] No space left on device" says neither."""
        try:
            yield
        except OSError as error:
            if error.filename is not None or not error.errno:
                raise
            raise OSError(
                error.errno,
                f"{error.strerror or os.strerror(error.errno)} (kept for a retry to resume)",
                str(self.part),
            ) from error

    def finish(self) -> pathlib.Path:
        """Moves the partial file into place once it passed the check; removes it otherwise."""
        if self.verify == "crc32" and self.expected_crc is not None:
            size = self.part.stat().st_size
            if (size, self.crc.value) != (self.total_size, self.expected_crc):
                self.part.unlink()
                raise IntegrityError(
                    f"downloaded {self.artifact_id} does not match the size and CRC-32 the server recorded "
                    f"({size} bytes, {self.crc.value:08x}; recorded {self.total_size} bytes, "
                    f"{self.expected_crc:08x}); removed"
                )
        else:  # the sha256 asked for, or a record without a CRC-32
            digest = self.digest if self.hashing else _file_sha256(self.part)  # no chunk came: read
            if digest.hexdigest() != self.artifact_id:
                self.part.unlink()
                raise IntegrityError(f"downloaded {self.artifact_id} does not match its sha256; removed")
        os.replace(self.part, self.dest)
        return self.dest


class _IdleWatch:
    """Cancels a streaming call once no message came for ``limit`` seconds (a stalled server
    would hold a download forever). One polling thread per call; the receiver only stamps the
    time of each message, so the hot path gains no thread hop."""

    def __init__(self, call: Any, limit: float) -> None:
        self.call, self.limit = call, limit
        self.last = time.monotonic()
        self.fired = False
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="pruning-idle-watch").start()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.limit / 4)):
            if time.monotonic() - self.last > self.limit:
                self.fired = True
                self.call.cancel()
                return

    def stamped(self, messages: Iterable[_T]) -> Iterator[_T]:
        for message in messages:
            self.last = time.monotonic()
            yield message

    def close(self) -> None:
        self._done.set()


def _unreached(error: BaseException) -> bool:
    """Whether a download's call failed before it reached a server (UNAVAILABLE: nothing
    listening, a server restarting): its retry is worth the wait even though it brought nothing."""
    return isinstance(error, Unavailable)


def idle_error(limit: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the download got no data for {limit:g} s and was stopped; its partial file is kept for a retry",
        code=grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def _create_job_request(
    spec: pb.JobSpec, labels: Mapping[str, str] | None, idempotency_key: str | None
) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(
        spec=spec, labels=dict(labels or {}), idempotency_key=idempotency_key or uuid.uuid4().hex
    )


def _validate_request(spec: pb.JobSpec, labels: Mapping[str, str] | None) -> pb.CreateJobRequest:
    return pb.CreateJobRequest(spec=spec, labels=dict(labels or {}), validate_only=True)


def _enum_value(enum: Any, prefix: str, value: int | str, what: str) -> int:
    """``value`` of a proto enum: its number, or its name less ``prefix`` in any case
    (``"model"`` for ``ARTIFACT_KIND_MODEL``); ValueError naming the choices otherwise."""
    if not isinstance(value, str):
        return int(value)
    names = [name for name in enum.keys() if not name.endswith("_UNSPECIFIED")]  # noqa: SIM118 - a proto enum, not a dict
    if prefix + value.upper() not in names:
        choices = ", ".join(name.removeprefix(prefix).lower() for name in names)
        raise ValueError(f"{what} must be one of {choices} (or a {prefix}* number), got {value!r}")
    return int(enum.Value(prefix + value.upper()))


def _list_artifacts_request(kind: int | str | None, page_size: int, page_token: str) -> pb.ListArtifactsRequest:
    value = _enum_value(pb.ArtifactKind, "ARTIFACT_KIND_", kind, "kind") if kind is not None else 0
    return pb.ListArtifactsRequest(page_size=page_size, page_token=page_token, kind=pb.ArtifactKind.ValueType(value))


def _list_jobs_request(
    states: Iterable[int | str] | None, labels: Mapping[str, str] | None, page_size: int, page_token: str
) -> pb.ListJobsRequest:
    if isinstance(states, (str, int)):
        raise TypeError(f"states is a list of states, not one: [{states!r}]")
    return pb.ListJobsRequest(
        page_size=page_size,
        page_token=page_token,
        labels=dict(labels or {}),
        states=[pb.JobState.ValueType(_enum_value(pb.JobState, "JOB_STATE_", s, "states")) for s in states or ()],
    )


class Client:
    """Talks to a pruning server.

    Example:
        >>> with Client("localhost:50051") as client:          # doctest: +SKIP
        ...     model = client.upload_model("model.keras")
        ...     job = client.submit(job_spec(model.id))
        ...     print(job.result(timeout=600).pruned_accuracy)
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float = 30.0,
        hash_first: bool = True,
        verify: str = "crc32",
    ) -> None:
        self.target = target
        self.options = ClientOptions(api_key, tls, root_certificates, timeout, hash_first=hash_first, verify=verify)
        self.options.check_target(target)
        creds = self.options.credentials()
        if creds is not None:
            self._channel = grpc.secure_channel(target, creds, options=self.options.channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=self.options.channel_options)
        self.stub = pb_grpc.PruningServiceStub(self._channel)
        self.sweep_stub = pb_grpc.SweepServiceStub(self._channel)
        self._transfers = wire.FramedCalls(self._channel)  # chunks framed by hand: fewer copies
        self._metadata = self.options.metadata

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel is connected (raises Unavailable otherwise)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as error:
            raise Unavailable(f"no pruning server at {self.target} after {timeout}s") from error

    # -- uploads -----------------------------------------------------------------------------

    def _upload(
        self,
        method: grpc.StreamUnaryMultiCallable[pb.UploadRequest | bytes, pb.Artifact],
        path: os.PathLike[str] | str,
        progress: UploadProgress | None,
    ) -> pb.Artifact:
        upload = _Upload(path, progress, self.options.verify)
        if self.options.hash_first:
            upload.hash()
        deadline = upload.deadline(self.options.timeout)
        requests = upload.pipelined()
        try:
            return upload.check(method(requests, timeout=deadline, metadata=self._metadata))
        except grpc.RpcError as error:
            upload.raise_read_error(error)
            raise
        finally:
            # answered before the last chunk (content already held): stop reading ahead now;
            # if gRPC's sender is still inside the iterator, collection closes it instead
            with contextlib.suppress(ValueError):
                requests.close()

    @_rpc
    def upload_model(self, model: ModelSource, progress: UploadProgress | None = None) -> pb.Artifact:
        """Uploads a .keras or .h5 model (its path, or a Keras model object, saved as
        ``<its name>.keras`` for the upload); returns its Artifact: ``.id`` for job specs,
        ``.model`` the summary the service read from the file (Keras version, inputs, outputs,
        layers; ``pruning_client.ModelSummary.from_proto(artifact.model)`` for the typed view).
        The id is the content's sha256, so uploading the same file again is cheap (not the
        same model object saved in another second: Keras writes the time of saving into each file).

        Raises:
            InvalidArgument: the service refuses the model (a Lambda layer, a Keras 3 layer it
                cannot translate, ...); the message names the layer.
            DeadlineExceeded: the upload outlived its deadline, the client's timeout plus the
                file at ``UPLOAD_FLOOR_RATE`` (a stalled server).
        """
        with model_file(model) as path:
            return self._upload(self._transfers.upload_model, path, progress)

    @_rpc
    def upload_dataset(self, data: DatasetSource, progress: UploadProgress | None = None) -> pb.Artifact:
        """Uploads a dataset: an .npz with x_train, y_train, x_test, y_test, or its arrays (a
        mapping, or ``((x_train, y_train), (x_test, y_test))`` as ``keras.datasets``'
        ``load_data()`` returns; saved as ``dataset.npz`` for the upload)."""
        with dataset_file(data) as path:
            return self._upload(self._transfers.upload_dataset, path, progress)

    # -- jobs --------------------------------------------------------------------------------

    @_rpc
    def submit(
        self, spec: pb.JobSpec, *, labels: Mapping[str, str] | None = None, idempotency_key: str | None = None
    ) -> JobHandle:
        """Creates a job and returns its handle. Retries are safe: the request carries an
        idempotency key (a fresh one unless given)."""
        request = _create_job_request(spec, labels, idempotency_key)
        job = self.stub.CreateJob(request, timeout=self.options.timeout, metadata=self._metadata)
        return JobHandle(self, job.id, job)

    @_rpc
    def validate(self, spec: pb.JobSpec, *, labels: Mapping[str, str] | None = None) -> JobPlan:
        """Checks the spec against its model and dataset as :meth:`submit` would and returns the
        plan (layers to prune, samples, steps, schedule, an estimate); creates and queues
        nothing (CreateJob with ``validate_only``).

        Raises:
            InvalidArgument: the spec does not fit; ``field_violations`` lists every problem.

        Example:
            >>> plan = client.validate(job_spec(model.id, epochs=2))    # doctest: +SKIP
            >>> plan.total_steps, [layer.name for layer in plan.layers]
            (844, ['conv2d', 'dense'])
        """
        job = self.stub.CreateJob(
            _validate_request(spec, labels), timeout=self.options.timeout, metadata=self._metadata
        )
        return JobPlan.from_proto(job.plan)

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job."""
        return JobHandle(self, job_id)

    @_rpc
    def get_job(self, job_id: str) -> pb.Job:
        """The job record now."""
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.options.timeout, metadata=self._metadata)

    @_rpc
    def cancel_job(self, job_id: str) -> pb.Job:
        """Asks the job to stop; returns the record (CANCELLED, or CANCELLING while it runs)."""
        return self.stub.CancelJob(
            pb.CancelJobRequest(job_id=job_id), timeout=self.options.timeout, metadata=self._metadata
        )

    cancel = cancel_job

    def list_jobs(
        self, *, states: Iterable[int | str] | None = None, labels: Mapping[str, str] | None = None, page_size: int = 50
    ) -> Iterator[pb.Job]:
        """Every matching job, newest first, fetched page by page; ``states`` by number or
        name (``["running", "queued"]``)."""
        token = ""
        while True:
            page = self._list_page(_list_jobs_request(states, labels, page_size, token))
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    @_rpc
    def _list_page(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        return self.stub.ListJobs(request, timeout=self.options.timeout, metadata=self._metadata)

    def watch_events(
        self, job_id: str, after_event_id: str = "", *, timeout: float | None = None
    ) -> Iterator[pb.JobEvent]:
        """The raw event stream (no reconnect) after ``after_event_id``, ending with the job or
        after ``timeout`` seconds (DeadlineExceeded); see :meth:`JobHandle.watch`."""
        stream = self.stub.WatchJob(
            pb.WatchJobRequest(job_id=job_id, after_event_id=after_event_id), timeout=timeout, metadata=self._metadata
        )
        try:
            with rpc_errors():
                yield from stream
        finally:
            stream.cancel()

    # -- sweeps ------------------------------------------------------------------------------

    @_rpc
    def create_sweep(
        self, spec: pb.SweepSpec, *, labels: Mapping[str, str] | None = None, idempotency_key: str | None = None
    ) -> SweepHandle:
        """Starts a sweep (see :func:`sweep_spec`); its trials are jobs spread over the workers.

        Example:
            >>> sweep = client.create_sweep(sweep_spec(job_spec(model.id), max_loss_pp=0.5))  # doctest: +SKIP
            >>> done = sweep.result()                                                        # doctest: +SKIP
            >>> done.trials[done.chosen_trial].sparsity                                     # doctest: +SKIP
            0.9125
        """
        request = create_sweep_request(spec, labels, idempotency_key)
        sweep = self.sweep_stub.CreateSweep(request, timeout=self.options.timeout, metadata=self._metadata)
        return SweepHandle(self, sweep.id, sweep)

    def sweep(self, sweep_id: str) -> SweepHandle:
        """A handle on an existing sweep."""
        return SweepHandle(self, sweep_id)

    @_rpc
    def get_sweep(self, sweep_id: str) -> pb.Sweep:
        """The sweep now."""
        return self.sweep_stub.GetSweep(
            pb.GetSweepRequest(sweep_id=sweep_id), timeout=self.options.timeout, metadata=self._metadata
        )

    @_rpc
    def cancel_sweep(self, sweep_id: str) -> pb.Sweep:
        """Cancels the sweep and every trial that has not ended."""
        return self.sweep_stub.CancelSweep(
            pb.CancelSweepRequest(sweep_id=sweep_id), timeout=self.options.timeout, metadata=self._metadata
        )

    def list_sweeps(self, *, state: int = 0, page_size: int = 50) -> Iterator[pb.Sweep]:
        """Every sweep of the tenant (optionally in one state), newest first."""
        token = ""
        while True:
            page = self._sweep_page(list_sweeps_request(state, page_size, token))
            yield from page.sweeps
            token = page.next_page_token
            if not token:
                return

    @_rpc
    def _sweep_page(self, request: pb.ListSweepsRequest) -> pb.ListSweepsResponse:
        return self.sweep_stub.ListSweeps(request, timeout=self.options.timeout, metadata=self._metadata)

    # -- downloads ---------------------------------------------------------------------------

    @_rpc
    def get_artifact(self, artifact_id: str) -> pb.Artifact:
        """This tenant's record of an artifact: kind, format, file name, size, when stored,
        and a model's summary. NotFound when the tenant has no such artifact."""
        return self.stub.GetArtifact(
            pb.GetArtifactRequest(artifact_id=artifact_id), timeout=self.options.timeout, metadata=self._metadata
        )

    @_rpc
    def delete_artifact(self, artifact_id: str) -> pb.Artifact:
        """Deletes this tenant's record of an artifact and returns it; the bytes go once no
        tenant's record points to them. NotFound when the tenant has no such artifact."""
        return self.stub.DeleteArtifact(
            pb.DeleteArtifactRequest(artifact_id=artifact_id), timeout=self.options.timeout, metadata=self._metadata
        )

    def list_artifacts(self, *, kind: int | str | None = None, page_size: int = 100) -> Iterator[pb.Artifact]:
        """This tenant's artifacts (uploads, exports, report files; ``kind`` one only:
        ``"model"``, ``"dataset"``, ``"export"``, ``"report"`` or its ``ARTIFACT_KIND_*``
        number), newest first by when the tenant first stored each, page by page; without
        model summaries.
        :meth:`artifacts_page` also tells the bytes they hold against the quota."""
        token = ""
        while True:
            page = self.artifacts_page(kind=kind, page_size=page_size, page_token=token)
            yield from page.artifacts
            token = page.next_page_token
            if not token:
                return

    @_rpc
    def artifacts_page(
        self, *, kind: int | str | None = None, page_size: int = 100, page_token: str = ""
    ) -> pb.ListArtifactsResponse:
        """One page of :meth:`list_artifacts`, with ``stored_bytes`` (all the tenant's
        artifacts) and ``quota_bytes`` (0 = no limit)."""
        return self.stub.ListArtifacts(
            _list_artifacts_request(kind, page_size, page_token), timeout=self.options.timeout, metadata=self._metadata
        )

    @_rpc
    def download(
        self,
        artifact_id: str,
        dest: os.PathLike[str] | str,
        *,
        resume: bool = True,
        progress: DownloadProgress | None = None,
        filename: str | None = None,
    ) -> pathlib.Path:
        """Downloads an artifact to the file ``dest``, or into ``dest`` when it is a directory
        (an existing one, or a path ending with a separator, created if missing), named
        ``filename``, else the artifact id. A partial download is kept beside it as
        ``<dest>.<artifact_id[:16]>.part`` and resumed (started again from 0 if it is longer
        than the artifact); the bytes are checked (``ClientOptions.verify``: the CRC-32 the server recorded,
        or the sha256) before the file is moved into place. A file
        already there with the artifact's content (its sha256 is the id) is kept as it is:
        nothing is downloaded.

        Example:
            >>> client.download(result.model_artifact_id, "out/")   # doctest: +SKIP
            PosixPath('out/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')
        """
        download = _Download(artifact_id, dest, filename=filename, resume=resume, verify=self.options.verify)
        try:
            try:
                download.lock()  # waits for another download of this artifact to this file
                download.refresh()
                if download.present(progress):
                    return download.dest
                for retry in range(DOWNLOAD_RESUMES + 1):
                    try:
                        try:
                            self._receive(download, progress)
                        except OutOfRange:
                            if not download.restart():
                                raise
                            self._receive(download, progress)
                        break
                    except (Unavailable, DeadlineExceeded) as error:
                        # the connection or the store went midway, or a stall ended the call: resumed
                        # from what arrived, while each call brings more or could not reach the
                        # server (one restarting answers no call for a moment)
                        if retry == DOWNLOAD_RESUMES or not (download.reopen() or _unreached(error)):
                            raise
                        time.sleep(RESUME_BACKOFF_S * 2**retry)
            except BaseException as error:
                download.drop_after(error)
                raise
            return download.finish()
        finally:
            download.release()

    def _receive(self, download: _Download, progress: DownloadProgress | None) -> None:
        """One DownloadArtifact call into ``download``; stopped (DeadlineExceeded) once no chunk
        came for the client's ``timeout``."""
        call = self._transfers.download(download.request(), metadata=self._metadata)
        idle = _IdleWatch(call, self.options.timeout)
        try:
            with rpc_errors():
                try:
                    download.receive(idle.stamped(call), progress)
                except grpc.RpcError:
                    if idle.fired:
                        raise idle_error(self.options.timeout) from None
                    raise
        finally:
            idle.close()
