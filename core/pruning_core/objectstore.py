"""Artifact storage behind one small interface, with two backends.

* :class:`LocalStore`: a directory, ``<root>/<sha[:2]>/<sha>`` (the embedded default). It is
  :class:`~pruning_core.blobs.BlobStore` plus streaming reads.
* :class:`S3Store`: an S3-compatible object store (AWS S3, MinIO, SeaweedFS, ...), through
  `obstore <https://developmentseed.org/obstore/>`_: Rust's ``object_store`` crate, async
  without threads, the GIL released during transfers, multipart uploads and ranged reads
  built in, and one small wheel with no botocore to keep up to date.

Both answer the same calls: :meth:`writer` (an upload being received: hashed on the way,
committed under its sha256 only once the hash is known), :meth:`read` (async, from an
offset, reading ahead), :meth:`fetch` (into a local file, verified), :meth:`put_file`,
:meth:`exists`, :meth:`ids`, :meth:`remove` and :meth:`sweep`, and keep a job's epoch
checkpoints where its next attempt finds them (:meth:`push_checkpoint`, :meth:`pull_checkpoint`,
:meth:`drop_checkpoints`). Choose with
``PRUNING_ARTIFACT_STORE`` (see :func:`open_store`). Nothing assumes that the server and a
worker share a disk: with S3 the server's directory only holds uploads being received (so that
they can be inspected) and each worker fetches what it needs into its own cache.

An upload to S3 streams into a multipart upload as it arrives. When the client announced the
sha256 in its header the multipart upload targets the final key and is completed only after
the received bytes hash to it (aborted otherwise); without one it targets a temporary key
and is copied under its sha256 once known. Either way nothing is readable under a content id
before its hash was verified, and a dropped upload is aborted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import functools
import hashlib
import json
import mmap
import os
import pathlib
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from stat import S_ISREG
from typing import TYPE_CHECKING, Any

from pruning.checksum import Crc32
from pruning.files import UncachedReader

from .blobs import BlobStore, BlobWriter, Stored, _put_back, is_artifact_id
from .settings import Settings, redacted_url
from .transfer import Buffer, Sink

if TYPE_CHECKING:
    from obstore import WritableFile
    from obstore.store import ClientConfig, RetryConfig
    from obstore.store import S3Store as _ObjectStore

MiB = 1 << 20


class CorruptArtifact(OSError):
    """An artifact's bytes read back from the store do not hash to its id."""

    version: Version | None = None  # the stored version read, where known (see quarantine)


class StoreUnavailable(OSError):
    """The object store did not take a multipart upload's part or its completion: obstore's
    writer raises a bare OSError ("Generic S3 error: ... Connection refused"), which is
    raised again as this one, so that it is told apart from a local disk's error."""


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """What the S3 client raises when the object store does not answer, or refuses the
    server's credentials: a connection refused or reset, a timeout, a 5xx, a 403."""
    from obstore.exceptions import GenericError

    return (GenericError, *refused_errors(), StoreUnavailable)


class StoreRefused(StoreUnavailable):
    """The object store refused the server's credentials for a multipart upload's part or its
    completion (obstore's writer says so only in its bare OSError's text)."""


# obstore's words for a 403 and a 401 (PermissionDeniedError's and UnauthenticatedError's)
_REFUSED = re.compile(r"lacked the necessary privileges|lacked valid authentication|403 Forbidden|401 Unauthorized")


def one_line(error: BaseException, most: int = 300) -> str:
    """A store's error (obstore's run over many lines) in one line of at most ``most``
    characters, for a log line said each time the store does not answer."""
    return " ".join(str(error).split())[:most]


_S3_CODE = re.compile(r"<Code>([A-Za-z]{1,64})</Code>")


def first_line(error: BaseException) -> str:
    """An error's own first line (the S3 client's run to dozens), at most 300 characters, with
    the S3 error code where the store gave one further down (NoSuchBucket, SignatureDoesNotMatch:
    which of a 403's or 404's causes it is): what a process that cannot start says."""
    whole = str(error).strip()
    text = (whole.splitlines() or [type(error).__name__])[0][:300]
    code = _S3_CODE.search(whole)
    return f"{text} ({code.group(1)})" if code and code.group(1) not in text else text


@contextlib.contextmanager
def _writer_errors() -> Iterator[None]:
    """Around obstore's writer: its bare OSError is the store's (:class:`StoreUnavailable`, or
    :class:`StoreRefused` for a refusal of the credentials, as the other calls' errors tell)."""
    try:
        yield
    except OSError as exc:
        if type(exc) is not OSError:  # a subclass (FileNotFoundError, ...): not the writer's own
            raise
        refused = _REFUSED.search(str(exc))
        raise (StoreRefused if refused else StoreUnavailable)(str(exc)) from exc


def refused_errors() -> tuple[type[BaseException], ...]:
    """Of :func:`unavailable_errors`, the S3 store's refusals of the server's credentials (a
    403 or 401): not a pause that a retry waits out, but a setting an operator must fix."""
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    return (PermissionDeniedError, UnauthenticatedError, StoreRefused)


def missing_errors() -> tuple[type[BaseException], ...]:
    """What either backend raises for bytes that are not there."""
    from obstore.exceptions import NotFoundError

    return (FileNotFoundError, NotFoundError)


# Names the deployment (its job store) whose housekeeping deletes in this store: beside the
# blobs, never one of them (not an artifact id).
DEPLOYMENT_MARKER = ".deployment"


def deployment_marker(deployment_id: str, settings: Settings) -> dict[str, str]:
    """What the marker says of this deployment: its job store's id and place."""
    return {"id": deployment_id, "key_prefix": settings.key_prefix, "redis": redacted_url(settings.redis_url)}


def marked_by_another(theirs: dict, ours: dict[str, str]) -> bool:
    """Whether a marker names another deployment: another job store id, in another place (the
    same Redis and key prefix is this deployment, its Redis having lost its data and its id)."""
    same_place = (theirs.get("key_prefix"), theirs.get("redis")) == (ours["key_prefix"], ours["redis"])
    return theirs.get("id") != ours["id"] and not same_place


QUARANTINE = "quarantine"  # blobs found changed behind the service's back, set aside
# A job's checkpoints are named by the attempt that wrote them: files ``a<attempt>-epoch-<n>.*``
# and the record ``latest-<attempt>.json`` naming the attempt's last complete checkpoint (written
# after its files). A reader takes the record of the newest attempt. An attempt deletes only
# what older attempts wrote and its own earlier epochs, never a newer attempt's: a stale attempt
# (its worker cut off past the reaper's patience) that passed its ownership check just before a
# newer attempt took the job can neither delete nor shadow the newer one's checkpoints.
# ``latest.json`` and ``epoch-<n>.*`` (written before attempts named them) count as attempt 0.
CHECKPOINT_LATEST = "latest.json"
# any number of digits: Job.attempt is an int32 (10 digits), and a file whose attempt the
# patterns missed would be neither read nor ever superseded
_CHECKPOINT_RECORD = re.compile(r"latest(?:-(\d+))?\.json")
_CHECKPOINT_FILE = re.compile(r"(?:a(\d+)-)?epoch-\d+\..+")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # a path component, never ``..``


Frame = Callable[[int, bytes | memoryview], bytes]  # (offset, chunk) -> the bytes to send
# Which stored version of a blob a read found (a file's device and inode; an object's ETag and
# Last-Modified): a quarantine of the bytes it read leaves a version stored since in place.
Version = tuple[Any, Any]
Opened = Callable[[Version], None]


def _set_aside_before(name: str, before: float) -> bool:
    """Whether ``name`` is a blob's in ``quarantine/`` (``<id>.<ns>``) set aside before ``before``."""
    artifact_id, _, ns = name.partition(".")
    return is_artifact_id(artifact_id) and ns.isascii() and ns.isdigit() and int(ns) < before * 1e9


def file_version(info: os.stat_result) -> Version:
    return (info.st_dev, info.st_ino)


def _object_version(meta: Any) -> Version:
    return (meta["e_tag"], meta["last_modified"])


def _size_differs(artifact_id: str, where: str, stored: int, recorded: int) -> CorruptArtifact:
    """The error of a blob whose size is not its record's (changed behind the service's back)."""
    return CorruptArtifact(f"artifact {artifact_id}: its {where} holds {stored} bytes, its record {recorded}")


class _Buffers:
    """Page-aligned read buffers the reading threads of a store share: taken for one read and
    framed out of, then given back (at most ``keep`` are kept), so that a download does not
    fault in new pages for each chunk."""

    def __init__(self, keep: int = 8):
        self.free: collections.deque[mmap.mmap] = collections.deque()
        self.keep = keep

    def take(self, size: int) -> mmap.mmap:
        with contextlib.suppress(IndexError):
            buffer = self.free.pop()
            if len(buffer) >= size:
                return buffer
        return mmap.mmap(-1, size)

    def give(self, buffer: mmap.mmap) -> None:
        if len(self.free) < self.keep:
            self.free.append(buffer)


def _pread(
    reader: UncachedReader, buffers: _Buffers, size: int, offset: int, frame: Frame | None, exact: bool
) -> bytes:
    """``size`` bytes of the file from ``offset`` (framed): with ``exact``, fewer (the file
    shrank behind the store's back) raise :class:`CorruptArtifact`; otherwise they are its end."""
    buffer = buffers.take(UncachedReader.buffer_size(size))
    try:
        with reader.read(size, offset, buffer) as data:
            if exact and len(data) != size:
                raise CorruptArtifact(f"the file ends at {offset + len(data)} bytes, short of its recorded size")
            if not data:
                return b""
            return frame(offset, data) if frame is not None else bytes(data)
    finally:
        buffers.give(buffer)


class Upload(BlobWriter):
    """An upload being received: :class:`~pruning_core.blobs.BlobWriter` (hashed on the way,
    committed under its sha256) that may be told the sha256 the client announced."""

    def announce(self, sha256: str) -> None:
        """The sha256 the client announced (the commit still checks what arrived)."""


class _Spare:
    """Read-ahead chunks the downloads of a process share beyond the one each has in flight:
    a download whose client stopped reading holds what it read ahead until the idle timeout
    ends it, so many such downloads would hold ``readahead`` chunks each. Taken and given on
    the event loop's thread only."""

    def __init__(self, total: int):
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def give(self, n: int) -> None:
        self.left += n


class LocalStore(BlobStore):
    """The artifact store in one directory (the embedded default)."""

    def __init__(self, root: os.PathLike | str, readahead: int = 4, direct: bool = True, readahead_total: int = 32):
        super().__init__(root, direct)
        self.readahead = readahead
        self.spare = _Spare(readahead_total)
        self.buffers = _Buffers()

    def writer(self) -> Upload:
        return Upload(self)

    def answers(self) -> bool:
        """Whether the store can take artifacts now (the metrics ask at each scrape): its
        directory is there and writable."""
        return self.root.is_dir() and os.access(self.root, os.W_OK)

    def probe(self) -> None:
        """Raises what the store raises when it does not answer (:func:`unavailable_errors`);
        a local directory has no outage of that kind."""

    def exists(self, artifact_id: str, size: int | None = None) -> bool:
        """Whether the store holds the blob (of ``size`` bytes, when given: one truncated or
        grown behind the service's back is not the artifact)."""
        try:
            info = self.path(artifact_id).stat()
        except FileNotFoundError:
            return False
        return S_ISREG(info.st_mode) and (size is None or info.st_size == size)

    def local_path(self, artifact_id: str) -> pathlib.Path | None:
        """The blob's file when it lives on this host's disk (None for remote stores)."""
        return self.path(artifact_id)

    def size(self, artifact_id: str) -> int:
        """How many bytes the store holds for the blob (FileNotFoundError: none)."""
        return self.path(artifact_id).stat().st_size

    def read_marker(self) -> bytes | None:
        """The deployment marker (which job store's housekeeping deletes here), if any."""
        try:
            return (self.root / DEPLOYMENT_MARKER).read_bytes()
        except FileNotFoundError:
            return None

    def write_marker(self, data: bytes) -> None:
        # an upload-* name: the sweep removes one a crash left (no process holds its lock)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-marker-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(name, self.root / DEPLOYMENT_MARKER)

    async def read(
        self,
        artifact_id: str,
        offset: int = 0,
        chunk: int = MiB,
        size: int | None = None,
        frame: Frame | None = None,
        opened: Opened | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The blob's bytes from ``offset`` in chunks of ``chunk``, read ahead off the event
        loop (up to ``readahead`` positional reads in flight: one, and more while the store's
        shared spare allows). ``size``, when known (the record's), is what the file must hold:
        a file of another size raises :class:`CorruptArtifact` (never a short or long download
        answered OK), and nothing past it is read. With ``frame``, each
        chunk comes as ``frame(its offset, its bytes)``, built in the reading thread (a
        download's serialized message). With ``direct`` I/O, what the page cache does not hold
        (an upload written past it) is read past it too (:class:`~pruning.files.UncachedReader`):
        the reads of a cold GiB cost 0.1-0.2 s of CPU instead of 1.5-3 s (README, Benchmarks)."""
        reader = UncachedReader(self.path(artifact_id), direct=self.direct)
        if opened is not None:
            opened(file_version(os.fstat(reader.fd)))  # the file read, whatever is put in its place
        held = 0  # spare chunks taken: the reads in flight beyond the first
        pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        try:
            if size is not None and reader.size != size:
                raise _size_differs(artifact_id, "file", reader.size, size)
            loop = asyncio.get_running_loop()
            position, end = offset, size
            while True:
                while (end is None or position < end) and (
                    not pending or (len(pending) < self.readahead and self.spare.take())
                ):
                    held += bool(pending)
                    take = chunk if end is None else min(chunk, end - position)
                    read = functools.partial(_pread, reader, self.buffers, take, position, frame, end is not None)
                    pending.append(loop.run_in_executor(None, read))
                    position += take
                if not pending:
                    break  # all of ``size`` was read
                data = await pending.popleft()
                if held > max(0, len(pending) - 1):
                    self.spare.give(1)
                    held -= 1
                if not data:
                    break
                yield data
        finally:
            self.spare.give(held)
            # closed once the reads under way end (their threads cannot be stopped), even when a
            # second cancellation interrupts the wait below
            reader.close()
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def quarantine(self, artifact_id: str, version: Version | None = None) -> str | None:
        """Moves the blob, whose bytes no longer hash to its id, out of the store's way into
        ``quarantine/`` (kept for an operator to look at): its records find no bytes, and an
        upload of the content stores it anew. Returns where it went. With ``version`` (what
        the read that found the bytes changed had opened), a file stored again since (an
        upload of the content, once another read set the changed one aside) is left in place,
        and None returned."""
        path = self.path(artifact_id)
        if version is not None and file_version(path.stat()) != version:
            return None
        dest = self.root / QUARANTINE / f"{self.key(artifact_id)}.{time.time_ns()}"
        dest.parent.mkdir(exist_ok=True)
        os.replace(path, dest)
        if version is not None and file_version(dest.stat()) != version:
            _put_back(dest, path)  # stored again between the look and the move
            return None
        return str(dest)

    def set_aside(self) -> int:
        """How many blobs :meth:`quarantine` set aside and an operator has not removed yet."""
        try:
            return sum(1 for _ in (self.root / QUARANTINE).iterdir())
        except FileNotFoundError:
            return 0

    def expire_set_aside(self, before: float) -> int:
        """Deletes the blobs :meth:`quarantine` set aside before ``before`` (unix s, the time
        their name records); returns how many. Anything else in ``quarantine/`` stays."""
        try:
            entries = list((self.root / QUARANTINE).iterdir())
        except FileNotFoundError:
            return 0
        removed = 0
        for entry in entries:
            if _set_aside_before(entry.name, before):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def key(self, artifact_id: str) -> str:
        if not is_artifact_id(artifact_id):
            raise ValueError(f"artifact id must be 64 lowercase hex digits, got {artifact_id!r}")
        return artifact_id

    def fetch(self, artifact_id: str, dest: pathlib.Path) -> None:
        """Copies the blob to ``dest`` (a file on this host)."""
        with open(self.path(artifact_id), "rb") as src, open(dest, "wb") as out:
            while data := src.read(8 * MiB):
                out.write(data)

    # A job's epoch checkpoints: written to a directory on the worker's disk, and kept where
    # the next attempt finds them, whatever host it runs on. Here that directory is in the
    # store itself (one host, or a disk every worker mounts), so nothing is sent or fetched.

    def checkpoint_dir(self, job_id: str, scratch: pathlib.Path) -> pathlib.Path:
        """Where a worker writes job ``job_id``'s checkpoints; ``scratch`` is the attempt's own
        directory (removed when the attempt ends), for stores that keep them elsewhere."""
        _check_job_id(job_id)
        return self.root / "checkpoints" / job_id

    def push_checkpoint(self, job_id: str, directory: pathlib.Path, prefix: str, attempt: int) -> None:
        """Keeps the checkpoint files ``prefix.*`` and ``attempt``'s record just written to
        ``directory`` (the worker has deleted there what they supersede)."""

    def pull_checkpoint(self, job_id: str, directory: pathlib.Path) -> None:
        """Brings the job's last kept checkpoint into ``directory`` when it is not there."""

    def drop_checkpoints(self, job_id: str, attempt: int | None = None) -> None:
        """Deletes the job's checkpoints (the job ended, or its record went); with ``attempt``,
        only those of that attempt and older ones (the attempt starts over)."""
        _check_job_id(job_id)
        if attempt is None:
            shutil.rmtree(self.root / "checkpoints" / job_id, ignore_errors=True)
        else:
            drop_superseded_checkpoints(self.root / "checkpoints" / job_id, attempt, None)

    def abort_stale_uploads(self, min_age_s: float) -> int:
        """Aborts what is left of uploads started more than ``min_age_s`` ago; a directory
        keeps nothing of them (:meth:`sweep` removes their spool files)."""
        return 0

    def checkpoint_jobs(self, min_age_s: float = 60.0) -> list[str]:
        """The jobs whose checkpoints are kept here, last written ``min_age_s`` ago or more."""
        root = self.root / "checkpoints"
        if not root.is_dir():
            return []
        now = time.time()
        return [
            d.name
            for d in root.iterdir()
            if _JOB_ID.fullmatch(d.name) and d.is_dir() and now - d.stat().st_mtime >= min_age_s
        ]


def checkpoint_prefix(attempt: int, epoch: int) -> str:
    """The name (before its ``.``) of the checkpoint files of ``epoch`` written by ``attempt``."""
    return f"a{attempt}-epoch-{epoch}"


def checkpoint_record(attempt: int) -> str:
    """The name of the record of ``attempt``'s last complete checkpoint."""
    return f"latest-{attempt}.json"


def checkpoint_attempt(name: str) -> tuple[int, bool] | None:
    """(the attempt that wrote it, whether it is a record) of a checkpoint file's name; None for
    another name."""
    if record := _CHECKPOINT_RECORD.fullmatch(name):
        return int(record.group(1) or 0), True
    if data := _CHECKPOINT_FILE.fullmatch(name):
        return int(data.group(1) or 0), False
    return None


def newest_checkpoint_record(names: Iterable[str]) -> str | None:
    """Among checkpoint file names, the record of the newest attempt; None without one."""
    records = [(found[0], name) for name in names if (found := checkpoint_attempt(name)) and found[1]]
    return max(records)[1] if records else None


def superseded_checkpoint(name: str, attempt: int, prefix: str | None) -> bool:
    """Whether ``attempt``, having written the checkpoint ``prefix`` (None: clearing its own),
    deletes the checkpoint file ``name``: an older attempt's, or its own of another epoch; never
    a newer attempt's."""
    found = checkpoint_attempt(name)
    if found is None or found[0] > attempt:
        return False
    if found[0] < attempt or prefix is None:
        return True
    return not found[1] and not name.startswith(f"{prefix}.")


def write_checkpoint_record(directory: pathlib.Path, record: bytes, attempt: int) -> None:
    """Points ``attempt``'s record in ``directory`` at a checkpoint whose files are written: a
    reader sees the old record or the new one, whole."""
    name = checkpoint_record(attempt)
    tmp = directory / f".{name}.tmp"
    tmp.write_bytes(record)
    os.replace(tmp, directory / name)


def read_checkpoint_record(directory: pathlib.Path) -> dict[str, Any] | None:
    """The newest attempt's record in ``directory`` ({"epoch", "prefix", "history"}), or None."""
    try:
        name = newest_checkpoint_record(p.name for p in directory.iterdir())
        return None if name is None else json.loads((directory / name).read_text())
    except (OSError, ValueError):
        return None


def drop_superseded_checkpoints(directory: pathlib.Path, attempt: int, prefix: str | None) -> None:
    """Deletes the checkpoint files in ``directory`` that ``attempt``, having written ``prefix``
    (None: clearing its own), supersedes (:func:`superseded_checkpoint`)."""
    try:
        names = [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return
    for name in names:
        if superseded_checkpoint(name, attempt, prefix):
            (directory / name).unlink(missing_ok=True)


def _check_job_id(job_id: str) -> None:
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id!r}")


class _S3Writer(Upload):
    """An upload received for S3: spooled to a local temporary file (hashed, and inspected
    before it is accepted) and streamed into a multipart upload at the same time."""

    durable = False  # the spool is scratch, not fsynced: S3 keeps the bytes

    def __init__(self, store: S3Store):
        super().__init__(store)
        self._s3 = store
        self._key: str | None = None
        self._remote: WritableFile | None = None

    def announce(self, sha256: str) -> None:
        """Targets the final key when the client announced the content's sha256. Bytes already
        stored there are written again all the same: the fresh object is what keeps the
        housekeeping, which may be taking the old one as unowned, from removing it."""
        sha256 = sha256.lower()
        if self._remote is None and is_artifact_id(sha256):
            self._key = self._s3.key(sha256)

    def sinks(self) -> list[Sink]:
        """The file (spooled for inspection), the sha256, and the multipart upload."""
        return [*super().sinks(), self._send]

    def _send(self, data: Buffer) -> None:
        if self._remote is None:
            import obstore

            self._key = self._key or self._s3.tmp_key()
            self._remote = obstore.open_writer(
                self._s3.objects,
                self._key,
                buffer_size=self._s3.part_size,
                max_concurrency=self._s3.max_concurrency,
            )
        with _writer_errors():
            self._remote.write(data)

    def _abort(self) -> None:
        if self._remote is not None and not self._remote.closed():
            # obstore aborts the multipart upload when its writer exits with an exception
            self._remote.__exit__(RuntimeError, RuntimeError("upload dropped"), None)
        self._remote = None

    def commit(self) -> str:
        import obstore

        self.close()
        sha = self.sha256
        final = self._s3.key(sha)
        try:
            announced = self._key is not None and not self._key.startswith(self._s3.tmp_prefix)
            if announced and self._key != final:
                raise ValueError("the content does not match the announced sha256")
            if self._remote is None:
                obstore.put(self._s3.objects, final, b"")  # an empty file
            else:
                with _writer_errors():
                    self._remote.close()  # completes the multipart upload (at its final key: the hash matched)
                if self._key != final:
                    assert self._key is not None
                    # over the same bytes if stored: written anew, the housekeeping leaves them
                    obstore.rename(self._s3.objects, self._key, final)
        except BaseException:
            self.discard()
            raise
        self._remote = None
        super().discard()  # the spool file: S3 holds the bytes now
        return sha

    def discard(self) -> None:
        try:
            self._abort()
        finally:
            super().discard()


class S3Store(LocalStore):
    """Artifacts in an S3-compatible bucket under ``prefix``; ``root`` is a local directory
    that only holds uploads being received."""

    tmp_prefix = "tmp/"
    checkpoint_prefix = "checkpoints/"

    def __init__(
        self,
        root: os.PathLike | str,
        objects: _ObjectStore,
        *,
        part_size: int = 5 * MiB,
        max_concurrency: int = 8,
        readahead: int = 4,
        direct: bool = True,
    ):
        super().__init__(root, readahead, direct, 0)  # its downloads stream one ranged GET
        self.objects = objects
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self._clock: tuple[float, float] | None = None  # (how far the store's clock is ahead, when measured)
        self._multipart: Callable[[], Any] | None = None  # the botocore S3 client, made once (from_settings)
        self.bucket, self.key_prefix = "", ""

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        from obstore.store import S3Store as ObjectStore

        if not settings.s3_bucket:
            raise ValueError("artifact_store 's3' needs s3_bucket (PRUNING_S3_BUCKET)")
        options: dict[str, Any] = {"region": settings.s3_region, "virtual_hosted_style_request": False}
        if settings.s3_endpoint:
            options["endpoint"] = settings.s3_endpoint
        if settings.s3_access_key_id:
            options["access_key_id"] = settings.s3_access_key_id
            options["secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
        timeout = datetime.timedelta(seconds=settings.s3_timeout_s)
        client_options: ClientConfig = {
            "allow_http": settings.s3_endpoint.startswith("http://"),
            # A stall, not a duration: no byte for s3_timeout_s. obstore's "timeout" bounds a
            # whole request, body included, and a download's GET streams as slowly as its
            # client reads (a 1 GiB download at 2 MB/s is one GET of 9 minutes), so it is a day.
            "read_timeout": timeout,
            "connect_timeout": min(timeout, datetime.timedelta(seconds=5)),
            "timeout": datetime.timedelta(days=1),
        }
        # A store that stops answering (paused, a network partition) fails a call after about
        # s3_timeout_s x (1 + s3_max_retries), not obstore's defaults (10 retries over 3 min).
        retries: RetryConfig = {
            "max_retries": settings.s3_max_retries,
            "retry_timeout": timeout * (settings.s3_max_retries + 1),
        }
        objects = ObjectStore(
            settings.s3_bucket,
            prefix=settings.s3_prefix or None,
            client_options=client_options,
            retry_config=retries,
            **options,
        )
        store = cls(
            settings.artifacts_path,
            objects,
            part_size=settings.s3_part_size,
            max_concurrency=settings.s3_max_concurrency,
            readahead=settings.download_readahead,
            direct=settings.direct_writes,
        )
        store.bucket = settings.s3_bucket
        store.key_prefix = f"{settings.s3_prefix.strip('/')}/" if settings.s3_prefix.strip("/") else ""
        store._multipart = functools.cache(lambda: _multipart_client(settings))
        return store

    def answers(self) -> bool:
        """Whether the bucket answers now: a listing of one key under a prefix no artifact
        takes comes back within this store's timeout (a HEAD of a missing key in a missing
        bucket answers 404 too); a store down, stalled, refusing the credentials or without
        its bucket does not. Open the store with a short timeout for it (the metrics use 3 s)."""
        try:
            self.probe()
        except Exception:  # noqa: BLE001 - any failure: not answering, for the metric
            return False
        return True

    def probe(self) -> None:
        """A listing of one key under a prefix no artifact takes; raises what the store
        raises when it does not answer."""
        import obstore

        next(iter(obstore.list(self.objects, prefix="probe/", chunk_size=1)), None)

    def quarantine(self, artifact_id: str, version: Version | None = None) -> str | None:
        """Copies the object to ``quarantine/`` (kept for an operator to look at), then deletes
        it: its records find no bytes, and an upload of the content stores it anew. With
        ``version`` (the ETag and Last-Modified the read found), an object written since (the
        content stored again) is left in place, and None returned: the delete is conditional on
        the ETag read (``If-Match``). A store that does not take a conditional delete gets a
        last look and a plain delete, and an upload landing between the two is lost there."""
        import obstore

        key = self.key(artifact_id)

        def current() -> Version:
            meta = obstore.head(self.objects, key)  # FileNotFoundError: set aside already
            return _object_version(meta)

        if version is not None and current() != version:
            return None
        dest = f"{QUARANTINE}/{key}.{time.time_ns()}"
        obstore.copy(self.objects, key, dest)
        if version is not None and not self._delete_version(key, version, current):
            obstore.delete(self.objects, dest)  # a copy of the bytes stored since
            return None
        if version is None:
            obstore.delete(self.objects, key)
        return f"{self.key_prefix}{dest}"

    def _delete_version(self, key: str, version: Version, current: Callable[[], Version]) -> bool:
        """Deletes the object at ``key`` if it is still ``version`` (its ETag); False, deleting
        nothing, when another was stored since."""
        import obstore
        from botocore.exceptions import ClientError, ParamValidationError

        if self._multipart is not None and version[0]:
            try:
                self._multipart().delete_object(Bucket=self.bucket, Key=f"{self.key_prefix}{key}", IfMatch=version[0])
                return True
            except ParamValidationError:
                pass  # a botocore without IfMatch on DeleteObject (1.34 has none): no request was sent
            except ClientError as exc:
                error = exc.response.get("Error", {})
                if error.get("Code") in ("PreconditionFailed", "412"):
                    return False
                if error.get("Code") in ("NoSuchKey", "404"):
                    return True  # set aside already
                if error.get("Code") not in _NO_CONDITIONAL_DELETE:
                    raise
        if current() != version:  # no conditional delete: a last look
            return False
        obstore.delete(self.objects, key)
        return True

    def set_aside(self) -> int:
        import obstore

        return sum(len(page) for page in obstore.list(self.objects, prefix=f"{QUARANTINE}/"))

    def expire_set_aside(self, before: float) -> int:
        import obstore

        keys = [
            meta["path"]
            for page in obstore.list(self.objects, prefix=f"{QUARANTINE}/")
            for meta in page
            if _set_aside_before(meta["path"].rsplit("/", 1)[-1], before)
        ]
        for start in range(0, len(keys), 1000):  # S3's DeleteObjects takes 1,000 keys a call
            obstore.delete(self.objects, keys[start : start + 1000])
        return len(keys)

    def tmp_key(self) -> str:
        return f"{self.tmp_prefix}upload-{uuid.uuid4().hex}"

    def path(self, artifact_id: str) -> pathlib.Path:
        raise NotImplementedError("artifacts in S3 have no local path: use read() or fetch()")

    def local_path(self, artifact_id: str) -> pathlib.Path | None:
        return None

    def size(self, artifact_id: str) -> int:
        import obstore

        return int(obstore.head(self.objects, self.key(artifact_id))["size"])

    def writer(self) -> Upload:
        return _S3Writer(self)

    def exists(self, artifact_id: str, size: int | None = None) -> bool:
        import obstore

        try:
            meta = obstore.head(self.objects, self.key(artifact_id))
        except FileNotFoundError:
            return False
        return meta["size"] == size if size is not None else True

    async def read(
        self,
        artifact_id: str,
        offset: int = 0,
        chunk: int = MiB,
        size: int | None = None,
        frame: Frame | None = None,
        opened: Opened | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """A ranged GET from ``offset`` (a resumed download re-reads nothing before it),
        streamed by obstore off the event loop and cut into chunks of at most ``chunk``
        (each ``frame(its offset, its bytes)`` when ``frame`` is given)."""
        position = offset
        async for data in self._read(artifact_id, offset, chunk, size, opened):
            yield data if frame is None else frame(position, data)
            position += len(data)

    async def _read(
        self, artifact_id: str, offset: int, chunk: int, size: int | None, opened: Opened | None = None
    ) -> AsyncIterator[bytes]:
        import obstore

        if size is not None and offset >= size:
            return  # S3 refuses an empty range

        key = self.key(artifact_id)
        try:
            result = await obstore.get_async(self.objects, key, options={"range": {"offset": offset}})
        except unavailable_errors() as exc:
            # a range past the end of an object shortened behind the service's back (416) is
            # no outage to retry: its record and bytes disagree
            if size is None:
                raise
            try:
                stored = (await obstore.head_async(self.objects, key))["size"]
            except (*unavailable_errors(), *missing_errors()):
                raise exc from None
            if stored == size:
                raise
            raise _size_differs(artifact_id, "object", stored, size) from None
        if size is not None and result.meta["size"] != size:
            raise _size_differs(artifact_id, "object", result.meta["size"], size)
        if opened is not None:
            opened(_object_version(result.meta))
        carry = bytearray()  # the tail of a part, completed by the next one
        async for part in result.stream(min_chunk_size=chunk):
            view, start = memoryview(part), 0  # a view: each byte is copied once, into its chunk
            if carry:
                start = chunk - len(carry)
                carry += view[:start]
                if len(carry) < chunk:
                    continue
                yield bytes(carry)
                carry.clear()
            while len(view) - start >= chunk:
                yield bytes(view[start : start + chunk])
                start += chunk
            carry += view[start:]
        if carry:
            yield bytes(carry)

    def fetch(self, artifact_id: str, dest: pathlib.Path) -> None:
        """Downloads the object into ``dest``, checking it against its sha256."""
        import obstore

        digest = hashlib.sha256()
        result = obstore.get(self.objects, self.key(artifact_id))
        with open(dest, "wb") as out:
            for part in result.stream(min_chunk_size=8 * MiB):
                digest.update(part)
                out.write(part)
        if digest.hexdigest() != artifact_id:
            dest.unlink(missing_ok=True)
            corrupt = CorruptArtifact(f"artifact {artifact_id} read back from S3 does not match its sha256")
            corrupt.version = _object_version(result.meta)  # what was read
            raise corrupt

    def _checkpoint_key(self, job_id: str, name: str = "") -> str:
        _check_job_id(job_id)
        return f"{self.checkpoint_prefix}{job_id}/{name}"

    def checkpoint_dir(self, job_id: str, scratch: pathlib.Path) -> pathlib.Path:
        """In the attempt's own directory: the bucket keeps them, and a worker killed outright
        leaves nothing behind that the next job's sweep does not remove."""
        _check_job_id(job_id)
        return scratch / "checkpoints"

    def _checkpoint_objects(self, job_id: str) -> Iterator[tuple[str, str]]:
        """(key, file name) of each object kept for the job's checkpoints."""
        import obstore

        for page in obstore.list(self.objects, prefix=self._checkpoint_key(job_id)):  # a prefix is whole segments
            for meta in page:
                yield meta["path"], meta["path"].rsplit("/", 1)[-1]

    def push_checkpoint(self, job_id: str, directory: pathlib.Path, prefix: str, attempt: int) -> None:
        """Sends the checkpoint's files, then ``attempt``'s record (a reader that finds it
        finds the files it names), then deletes the objects they supersede
        (:func:`superseded_checkpoint`)."""
        import obstore

        files = sorted(p for p in directory.iterdir() if p.name.startswith(f"{prefix}."))
        for path in [*files, directory / checkpoint_record(attempt)]:
            obstore.put(self.objects, self._checkpoint_key(job_id, path.name), path)
        self._drop_objects(job_id, attempt, prefix)

    def _drop_objects(self, job_id: str, attempt: int | None, prefix: str | None) -> None:
        import obstore

        gone = [
            (key, checkpoint_attempt(name))
            for key, name in self._checkpoint_objects(job_id)
            if attempt is None or superseded_checkpoint(name, attempt, prefix)
        ]
        # the records first: a delete cut short leaves no record naming files already gone
        records = [key for key, found in gone if found and found[1]]
        files = [key for key, found in gone if not (found and found[1])]
        for keys in (records, files):
            if keys:
                obstore.delete(self.objects, keys)

    def pull_checkpoint(self, job_id: str, directory: pathlib.Path) -> None:
        """Fetches the job's last checkpoint from the bucket (a previous attempt ran on
        another host, or was killed on this one): the newest attempt's record names it, and is
        written last."""
        import obstore

        if directory.is_dir() and newest_checkpoint_record(p.name for p in directory.iterdir()):
            return
        for _ in range(3):  # an attempt still writing may replace the record between the reads
            kept = {name: key for key, name in self._checkpoint_objects(job_id)}
            newest = newest_checkpoint_record(kept)
            if newest is None:
                return
            try:
                record = bytes(obstore.get(self.objects, kept[newest]).bytes())
                prefix = str(json.loads(record)["prefix"])
            except FileNotFoundError:
                continue
            # listed after the record was read: the files it names were written before it
            files = [(name, key) for key, name in self._checkpoint_objects(job_id) if name.startswith(f"{prefix}.")]
            if not files:
                continue
            directory.mkdir(parents=True, exist_ok=True)
            for name, key in files:
                (directory / name).write_bytes(bytes(obstore.get(self.objects, key).bytes()))
            found = checkpoint_attempt(newest)
            write_checkpoint_record(directory, record, found[0] if found else 0)
            return

    def checkpoint_jobs(self, min_age_s: float = 60.0) -> list[str]:
        import obstore

        newest: dict[str, float] = {}
        for page in obstore.list(self.objects, prefix=self.checkpoint_prefix):
            for meta in page:
                job_id = meta["path"][len(self.checkpoint_prefix) :].split("/", 1)[0]
                if _JOB_ID.fullmatch(job_id):
                    newest[job_id] = min(newest.get(job_id, float("inf")), _age_s(meta["last_modified"]))
        return [job_id for job_id, age in newest.items() if age >= min_age_s]

    def drop_checkpoints(self, job_id: str, attempt: int | None = None) -> None:
        super().drop_checkpoints(job_id, attempt)
        self._drop_objects(job_id, attempt, None)

    def put_file(self, source: os.PathLike | str) -> Stored:
        """Hashes a local file and uploads it under its sha256 (a multipart upload when
        large). Bytes already stored are written again, as an upload's are: the housekeeping,
        which may be taking the old object as unowned, leaves one written this minute."""
        import obstore

        digest, crc, size = hashlib.sha256(), Crc32(), 0
        with open(source, "rb") as src:
            while data := src.read(8 * MiB):
                digest.update(data)
                crc.update(data)
                size += len(data)
        sha = digest.hexdigest()
        obstore.put(
            self.objects,
            self.key(sha),
            pathlib.Path(source),
            chunk_size=self.part_size,
            max_concurrency=self.max_concurrency,
        )
        return Stored(sha, size, crc.value)

    def ids(self) -> Iterator[str]:
        import obstore

        for page in obstore.list(self.objects):
            for meta in page:
                if is_artifact_id(meta["path"]):
                    yield meta["path"]

    def read_marker(self) -> bytes | None:
        import obstore

        try:
            return bytes(obstore.get(self.objects, DEPLOYMENT_MARKER).bytes())
        except missing_errors():
            return None

    def write_marker(self, data: bytes) -> None:
        import obstore

        obstore.put(self.objects, DEPLOYMENT_MARKER, data)

    def store_clock_ahead_s(self) -> float:
        """How far the S3 server's clock runs ahead of this host's (negative: behind), from the
        Last-Modified of a small object written now (to the second); measured again every 10
        minutes. An object's age is the store's clock against its Last-Modified, not this
        host's: a server whose clock runs a minute ahead would otherwise take a fresh object for
        an old one."""
        import obstore

        if self._clock is not None and time.monotonic() - self._clock[1] < 600:
            return self._clock[0]
        before = time.time()
        obstore.put(self.objects, ".clock", b"")
        written = obstore.head(self.objects, ".clock")["last_modified"].timestamp()
        after = time.time()
        # Last-Modified is cut to the second: the write happened within [written, written + 1)
        ahead = written + 0.5 - (before + after) / 2
        self._clock = (ahead, time.monotonic())
        return ahead

    def remove(self, artifact_id: str, min_age_s: float = 60.0, not_before: float = 0.0) -> bool:
        import obstore

        key = self.key(artifact_id)
        try:
            meta = obstore.head(self.objects, key)
        except FileNotFoundError:
            return False
        modified = meta["last_modified"].timestamp()
        ahead = self.store_clock_ahead_s()
        if time.time() + ahead - modified < min_age_s or modified - ahead < not_before:
            return False
        obstore.delete(self.objects, key)
        return True

    def abort_stale_uploads(self, min_age_s: float) -> int:
        """Aborts the multipart uploads under the store's prefix started more than ``min_age_s``
        ago by the S3 server's clock, freeing their parts: an upload dropped while the store did
        not answer its abort (obstore's writer gives up its upload then), or a killed server's.
        obstore lists no multipart uploads, so botocore does. Returns how many it aborted;
        raises :class:`StoreUnavailable` when the store does not answer."""
        if self._multipart is None:
            return 0
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._multipart()
        cutoff = time.time() + self.store_clock_ahead_s() - min_age_s
        aborted = 0
        try:
            for page in client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.key_prefix
            ):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() >= cutoff or not self._ours(upload["Key"]):
                        continue
                    try:
                        client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except ClientError as exc:
                        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":  # ended meanwhile
                            raise
                        continue
                    aborted += 1
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            refused = code in _REFUSED_CODES or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (
                401,
                403,
            )
            raise (StoreRefused if refused else StoreUnavailable)(
                f"listing or aborting multipart uploads: {exc}"
            ) from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"listing or aborting multipart uploads: {exc}") from exc
        return aborted

    def _ours(self, key: str) -> bool:
        """Whether a bucket key is one this store writes (an artifact, a temporary object, a
        checkpoint): with no prefix the bucket may hold another application's uploads too."""
        rest = key[len(self.key_prefix) :] if key.startswith(self.key_prefix) else None
        return rest is not None and (is_artifact_id(rest) or rest.startswith((self.tmp_prefix, self.checkpoint_prefix)))

    def sweep(self, min_age_s: float = 60.0) -> int:
        """Removes the local spool files of dead uploads and temporary objects older than
        ``min_age_s`` (left by a server killed between completing and renaming an upload).
        Parts of multipart uploads nobody aborted are :meth:`abort_stale_uploads`'s."""
        import obstore

        removed = super().sweep(min_age_s)
        # Their age is the S3 server's clock (Last-Modified) against this one: a server whose
        # clock runs ahead must not take the object another server is renaming this second.
        # One lives for the seconds of a rename, so an orphan can wait an hour.
        oldest = max(min_age_s, TMP_OBJECT_MIN_AGE_S)
        for page in obstore.list(self.objects, prefix=self.tmp_prefix):
            for meta in page:
                if _age_s(meta["last_modified"]) >= oldest:
                    obstore.delete(self.objects, meta["path"])
                    removed += 1
        return removed


TMP_OBJECT_MIN_AGE_S = 3600.0  # clocks an hour apart still leave a temporary object alone
# What a store answers a conditional delete it does not implement
_NO_CONDITIONAL_DELETE = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}
_REFUSED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}


def _multipart_client(settings: Settings) -> Any:
    """A botocore S3 client for the bucket the settings name, as obstore reaches it (endpoint,
    path-style, region, credentials or the AWS default chain, timeouts and retries)."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    credentials: dict[str, str] = {}
    if settings.s3_access_key_id:
        credentials = {
            "aws_access_key_id": settings.s3_access_key_id,
            "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
        }
    config = Config(
        s3={"addressing_style": "path"},
        connect_timeout=min(settings.s3_timeout_s, 5.0),
        read_timeout=settings.s3_timeout_s,
        retries={"max_attempts": settings.s3_max_retries + 1, "mode": "standard"},
    )
    return session.create_client(
        "s3", endpoint_url=settings.s3_endpoint or None, region_name=settings.s3_region, config=config, **credentials
    )


def _age_s(when: datetime.datetime) -> float:
    return (datetime.datetime.now(datetime.UTC) - when).total_seconds()


def open_probe(settings: Settings, timeout_s: float) -> LocalStore:
    """The artifact store the settings name, opened to be asked whether it answers: an S3
    call without an answer for ``timeout_s`` fails at once, without the retries a transfer
    gets (``s3_timeout_s`` x (1 + ``s3_max_retries``), a minute and a half by default)."""
    return open_store(
        settings.model_copy(update={"s3_timeout_s": min(settings.s3_timeout_s, timeout_s), "s3_max_retries": 0})
    )


def open_store(settings: Settings) -> LocalStore:
    """The artifact store the settings name: ``local`` (``artifacts_path``) or ``s3``."""
    if settings.artifact_store == "s3":
        return S3Store.from_settings(settings)
    return LocalStore(
        settings.artifacts_path,
        settings.download_readahead,
        settings.direct_writes,
        settings.download_readahead_total,
    )
