"""The PruningService servicer: validate, convert, delegate, answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from celery import Celery
from google.rpc import code_pb2

from pruning import checksum
from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning.wire import download_chunk
from pruning_core import formats, modelcheck, objectstore, plan, recipe, tasks, validation, zipscan
from pruning_core.blobs import is_artifact_id
from pruning_core.objectstore import LocalStore, Upload
from pruning_core.settings import Settings
from pruning_core.store import (
    UPLOAD_KINDS,
    ArtifactInUse,
    ArtifactRecord,
    AsyncJobStore,
    HeldAsAnotherKind,
    InputGone,
    JobNotFound,
    TooManyActiveJobs,
    new_job_id,
    state_event,
)
from pruning_core.transfer import Sink, WritePipeline

from . import convert
from .errors import Exhausted, Failure, Invalid, model_refused
from .limits import Caps, Reservation
from .watches import WatchHub

log = logging.getLogger(__name__)
T = TypeVar("T")
_EVENT_ID = re.compile(r"[0-9]+-[0-9]+")  # ASCII digits: \d takes any Unicode digit, which int() reads too
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_JOB_ID = re.compile(r"[0-9a-f]{24}")
_RESERVE_AHEAD = 64 * 1024 * 1024  # an upload of unannounced size reserves its quota this far ahead
_RESERVATION_HOLD_S = 15.0  # renewed every 5 s while its upload goes on; lapses this long after a server died


class _WholeCrc:
    """Frames a download's chunks (in the reading threads, in any order) and keeps each one's
    CRC-32; :meth:`holds`, asked for each chunk in order, runs the whole file's CRC-32 on and,
    at the last chunk, tells whether it is the one recorded."""

    def __init__(self, frame: Callable[[int, Any], bytes], recorded: int):
        self.frame, self.recorded = frame, recorded
        self.chunks: dict[int, tuple[int, int]] = {}  # offset: (CRC-32, length)
        self.value = self.position = 0
        self.version: objectstore.Version | None = None  # the stored version read

    def opened(self, version: objectstore.Version) -> None:
        self.version = version

    def __call__(self, offset: int, data: Any) -> bytes:
        self.chunks[offset] = (checksum.crc32(data), len(data))
        return self.frame(offset, data)

    def holds(self, size: int) -> bool:
        crc, length = self.chunks.pop(self.position)
        self.value = checksum.combine(self.value, crc, length)
        self.position += length
        return self.position < size or self.value == self.recorded


class _Held(Exception):
    """The upload announced content the tenant already holds: answered without the rest."""

    def __init__(self, artifact: pb.Artifact):
        super().__init__(artifact.id)
        self.artifact = artifact


def _misnamed(filename: str, fmt: str) -> str | None:
    """Why a model file named ``filename`` whose content is ``fmt`` is refused (its name says
    another format), or None."""
    named = formats.MODEL_SUFFIXES.get(convert.extension(filename))
    if named and named != fmt:
        return f"the file name says {named} but the content is {fmt}"
    return None


_ARTIFACT_CURSOR = re.compile(r"([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?):([0-9a-f]{64})")


def _artifact_cursor(token: str) -> tuple[float, str]:
    """Where a page of ListArtifacts ended (its last record's time and id), from its token."""
    match = _ARTIFACT_CURSOR.fullmatch(token)
    if match is None or not math.isfinite(created := float(match.group(1))):
        raise Invalid([("page_token", "not a token this service returned")])
    return (created, match.group(2))


def _bearer_token(value: str) -> str:
    """The key of an ``authorization`` value: the token of ``Bearer <key>``, the scheme's name
    in any case (RFC 7235: "bearer", "BEARER" are the same scheme), or the whole value as a
    bare key."""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else value.strip()


def _is_event_id(value: str) -> bool:
    return bool(_EVENT_ID.fullmatch(value)) and all(int(part) < 2**64 for part in value.split("-"))


def _other_upload_kinds(kind: pb.ArtifactKind.ValueType) -> tuple[int, ...]:
    return tuple(k for k in UPLOAD_KINDS if k != kind)


def _refuse_other_upload_kind(artifact_id: str, held: int, kind: pb.ArtifactKind.ValueType) -> None:
    """FAILED_PRECONDITION for an upload of content the tenant holds as the other upload kind
    (a file valid as both a model and a dataset): one record per content would change kind
    under the jobs naming it. An export or report file uploaded as a model becomes one."""
    if held in _other_upload_kinds(kind):
        raise _held_as_another_kind(artifact_id, held, kind)


def _held_as_another_kind(artifact_id: str, held: int, kind: pb.ArtifactKind.ValueType) -> Failure:
    field = "model" if kind == pb.ARTIFACT_KIND_MODEL else "dataset"
    return Failure(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"{field}: this content is held as a {convert.kind_name(held)} (artifact {artifact_id}), not a "
        f"{convert.kind_name(kind)}: upload the {convert.kind_name(kind)} file "
        f"({'.keras or .h5' if kind == pb.ARTIFACT_KIND_MODEL else '.npz'})",
    )


def _drop(pipe: WritePipeline | None, writer) -> None:
    """Stops an upload's pipeline and removes what it wrote. A failure here (an S3 abort over
    a broken network) is logged, never answered in place of the refusal; the housekeeping
    aborts the multipart upload left behind once it is s3_abort_uploads_after_s old."""
    try:
        if pipe is not None:
            pipe.abandon()
        writer.discard()
    except objectstore.unavailable_errors() as exc:  # the store is down: one line, not a traceback
        log.warning(
            "could not abort a dropped upload's multipart upload (%s): the housekeeping aborts it once it is "
            "PRUNING_S3_ABORT_UPLOADS_AFTER_S old",
            objectstore.one_line(exc),
        )
    except Exception:
        log.exception("could not remove a dropped upload")


class _StallWatch:
    """Ends a download whose client takes no chunk for ``idle_s``: one that stops reading,
    alive (its keepalive pings answered), held its slot for good and, with every slot of its
    tenant taken, kept the tenant's other downloads out. gRPC only hands the status on behind
    the bytes the transport already holds, so the handler is also cancelled at once: the slot
    and the read-ahead are freed even if the client never reads again, and one that does
    reads what was sent, then DEADLINE_EXCEEDED (a download resumes from its offset)."""

    def __init__(self, context: Any, idle_s: float):
        self.context, self.idle_s = context, idle_s
        self.task = asyncio.current_task()
        self.since: float | None = None  # when the chunk gRPC is sending now was handed to it
        self.fired = False
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(idle_s, self._check)
        self._ending: list[asyncio.Future] = []

    def _check(self) -> None:
        if self.closed:
            return
        waited = 0.0 if self.since is None else time.monotonic() - self.since
        if waited < self.idle_s:
            self._timer = self._loop.call_later(self.idle_s - waited, self._check)
            return
        self._ending.append(self._loop.create_task(self._end()))

    async def _end(self) -> None:
        if self.closed:  # the download ended meanwhile
            return
        if self.since is None or time.monotonic() - self.since < self.idle_s:  # it moved on meanwhile
            self._check()
            return
        self.fired = True
        message = f"the client took no chunk for {self.idle_s:g} s; resume the download from its offset"
        abort = asyncio.ensure_future(self.context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message))
        abort.add_done_callback(lambda done: done.cancelled() or done.exception())  # its AbortError: expected
        self._ending.append(abort)
        await asyncio.sleep(0)  # the status is queued before the handler goes
        if self.task is not None:
            self.task.cancel()

    def close(self) -> None:
        self.closed = True
        self._timer.cancel()


async def _to_the_end(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread. A caller cancelled meanwhile (the client went away) waits for
    the thread to end before the cancellation goes on: what the caller then does to the same
    upload (discard it: abort, close, remove) must not run beside it."""
    # a future of the executor, not a task: a loop closing cancels tasks, and this must not be
    future = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():  # a thread cannot be stopped: wait, through more cancellations
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller hears
        raise


async def _drop_off_loop(pipe: WritePipeline | None, writer) -> None:
    # off the loop (a sink may be finishing a chunk; an S3 abort is a round trip), and done
    # even if the caller is cancelled meanwhile
    await _to_the_end(_drop, pipe, writer)


def make_celery(settings: Settings) -> Celery:
    """A Celery app that only sends: the server never imports the worker's tasks."""
    app = Celery("pruning", broker=settings.celery_broker_url())
    app.conf.update(broker_connection_retry_on_startup=True, task_default_queue=settings.queue)
    return app


class Searches(Protocol):
    """What the job service asks of the sweep service for a job with a budget."""

    async def create_search(self, tenant: str, request: pb.CreateJobRequest) -> pb.Job: ...

    async def cancel_search(self, tenant: str, job: pb.Job) -> pb.Job: ...


class PruningService(pb_grpc.PruningServiceServicer):
    def __init__(self, settings: Settings, store: AsyncJobStore, blobs: LocalStore, celery: Celery, hub: WatchHub):
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.celery = celery
        self.hub = hub
        self.watches = Caps("watches", settings.max_watches_per_tenant, settings.max_watches)
        self.uploads = Caps("uploads", settings.max_uploads_per_tenant, settings.max_uploads)
        self.downloads = Caps("downloads", settings.max_downloads_per_tenant, settings.max_downloads)
        self._tenants = settings.tenants_by_key()
        # The code that inspects uploads and the limits it applies: a record of content that
        # passed other ones is read and inspected again when the content is uploaded again.
        limits = (settings.max_upload_bytes, settings.max_decompressed_bytes, settings.max_config_bytes)
        self._inspection = ":".join(map(str, (modelcheck.INSPECTION, *limits)))
        # Runs jobs with a budget (JobSpec.budget) as search sweeps; set by the SweepService.
        self.searches: Searches | None = None

    # -- helpers ---------------------------------------------------------------------------

    async def _tenant(self, context) -> str:
        if not self._tenants:
            return "default"
        metadata = dict(context.invocation_metadata() or ())
        key = metadata.get("x-api-key") or _bearer_token(metadata.get("authorization", ""))
        tenant = self._tenants.get(key)
        if tenant is None:
            raise Failure(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown API key (x-api-key)")
        return tenant

    async def _job(self, tenant: str, job_id: str) -> pb.Job:
        if not _JOB_ID.fullmatch(job_id):
            raise Invalid([("job_id", f"not a job id (24 hex digits): {job_id[:100]!r}")])
        try:
            return await self.store.get(tenant, job_id)
        except JobNotFound:
            raise Failure(grpc.StatusCode.NOT_FOUND, f"no job {job_id}") from None

    @contextlib.asynccontextmanager
    async def _slot(self, caps: Caps, tenant: str) -> AsyncIterator[None]:
        """Holds one of ``caps``'s slots for the call; RESOURCE_EXHAUSTED when none is free."""
        refused = caps.try_acquire(tenant)
        if refused:
            raise Exhausted(refused, self.settings.retry_after_s)
        try:
            yield
        finally:
            caps.release(tenant)

    async def _artifact(self, tenant: str, artifact_id: str, field: str) -> ArtifactRecord:
        if not is_artifact_id(artifact_id):
            raise Invalid([(field, f"not an artifact id (64 hex digits): {artifact_id!r}")])
        try:
            return await self.store.get_artifact(tenant, artifact_id)
        except KeyError:
            raise Failure(grpc.StatusCode.NOT_FOUND, f"{field}: no artifact {artifact_id}") from None

    @contextlib.asynccontextmanager
    async def _reservation(self, tenant: str, field: str) -> AsyncIterator[Reservation]:
        """The upload's hold on the tenant's stored-bytes quota, released once its record
        counts its bytes or it failed."""
        settings = self.settings
        reservation = Reservation(
            self.store,
            tenant,
            field,
            settings.max_stored_bytes_per_tenant,
            _RESERVATION_HOLD_S,
            _RESERVE_AHEAD,
            settings.retry_after_s,
        )
        try:
            yield reservation
        finally:
            await reservation.release()

    async def _held(self, tenant: str, kind: pb.ArtifactKind.ValueType, header: pb.UploadHeader) -> pb.Artifact | None:
        """The tenant's artifact of the content the header announces, when it holds one of this
        kind, of the announced size, whose bytes are stored: its record is written again (under
        the new file name, its retention starting over) and answered."""
        try:
            record = await self.store.get_artifact(tenant, header.sha256.lower())
        except KeyError:
            return None
        _refuse_other_upload_kind(record.id, record.kind, kind)  # said now, before the bytes are read
        if record.kind != kind or header.size not in (0, record.size):
            return None
        if record.info.get("inspection") != self._inspection:
            return None  # inspected by other code or under other limits: read on and inspected again
        if kind == pb.ARTIFACT_KIND_MODEL and _misnamed(header.filename, record.format):
            return None  # read on, and refused as any upload so misnamed
        if not await asyncio.to_thread(self.blobs.exists, record.id, record.size):
            return None  # gone, or not the bytes stored (cut or grown): read on, and stored again
        record = dataclasses.replace(record, filename=convert.safe_filename(header.filename), created=time.time())
        # Only while the record exists: one removed since (the retention, a DeleteArtifact) is
        # not brought back over bytes the housekeeping may be taking; the retention in turn
        # leaves a record written again after it looked.
        if not await self.store.refresh_artifact(tenant, record):
            return None
        log.info("%s already holds artifact %s: answered after the upload's header", tenant, record.id)
        return record.to_proto()

    async def _receive(
        self,
        request_iterator,
        field: str,
        quota: Reservation,
        also: Sequence[Sink] = (),
        *,
        tenant: str,
        kind: pb.ArtifactKind.ValueType,
    ):
        """Streams an upload into a blob writer (and each of ``also``), enforcing the header,
        the size limit, the tenant's stored-bytes quota (reserved ahead of what arrives) and
        the idle timeout. A refused upload's temporary file is gone before the client hears
        why. A header announcing content the tenant already holds (:meth:`_held`) ends the
        upload there: :class:`_Held` carries the answer, and the rest is never read."""
        limit = self.settings.max_upload_bytes
        header = None
        # The file and the pipeline come once the header is accepted: a refused or held header
        # costs no file and no threads.
        writer: Upload | None = None
        pipe: WritePipeline | None = None

        def refuse(code: grpc.StatusCode, message: str, violation: str | None = None) -> NoReturn:
            if violation:
                raise Invalid([(violation, message)])
            raise Failure(code, f"{field}: {message}")

        # Idle: no byte for this long. Empty messages are no progress: sent every few seconds,
        # they held an upload's slot open for good.
        idle = self.settings.upload_idle_timeout_s
        progress = time.monotonic()
        requests = aiter(request_iterator)
        try:
            while True:
                left = progress + idle - time.monotonic()
                try:
                    if left <= 0:  # said before a read starts: a read cut midway may end otherwise than timed out
                        raise TimeoutError
                    request = await asyncio.wait_for(anext(requests), left)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    refuse(grpc.StatusCode.DEADLINE_EXCEEDED, f"no bytes for {idle:g} s; the upload was dropped")
                # a chunk-only message arrives as a view of its bytes (pruning.wire)
                chunk = request if isinstance(request, memoryview) else None
                if header is None:
                    if chunk is not None or request.WhichOneof("payload") != "header":
                        refuse(
                            grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the header", f"{field}.header"
                        )
                    header = request.header
                    if header.size < 0:
                        refuse(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"must be >= 0 (0 = not announced), got {header.size}",
                            f"{field}.header.size",
                        )
                    if header.sha256 and not _SHA256.fullmatch(header.sha256):
                        refuse(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"must be 64 hex digits (or empty), got {header.sha256[:80]!r}",
                            f"{field}.header.sha256",
                        )
                    if header.size > limit:
                        refuse(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{header.size:,} bytes is over the upload limit of {limit:,} bytes (PRUNING_MAX_UPLOAD_BYTES)",
                        )
                    if header.sha256 and (artifact := await self._held(tenant, kind, header)) is not None:
                        raise _Held(artifact)
                    writer = self.blobs.writer()
                    # hashing and writing overlap with receiving and with each other, behind bounded queues
                    pipe = WritePipeline(
                        [*writer.sinks(), *also],
                        self.settings.upload_pipeline_depth,
                        self.settings.upload_pipeline_max_bytes,
                    )
                    if header.sha256:
                        await _to_the_end(writer.announce, header.sha256)
                    quota.announced = header.size
                    await quota.need(max(header.size, 1))
                    progress = time.monotonic()
                    continue
                if chunk is None:
                    if request.HasField("header"):
                        refuse(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "only the first message may be the header",
                            f"{field}.header",
                        )
                    chunk = request.chunk
                assert pipe is not None  # made with the header
                if pipe.accepted + len(chunk) > limit:
                    refuse(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"upload is over the limit of {limit:,} bytes (PRUNING_MAX_UPLOAD_BYTES)",
                    )
                if not len(chunk):
                    continue
                await quota.need(pipe.accepted + len(chunk))
                await pipe.write(chunk)
                # from when the server can take more: a full pipeline (a slow disk or store) is
                # the server's wait, never counted against the client
                progress = time.monotonic()
            if header is None:
                refuse(grpc.StatusCode.INVALID_ARGUMENT, "empty upload", field)
            assert writer is not None and pipe is not None  # made with the header
            await pipe.drain()
            if writer.size == 0:
                refuse(grpc.StatusCode.INVALID_ARGUMENT, "empty upload", field)
            if header.size and header.size != writer.size:
                refuse(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"announced {header.size} bytes, received {writer.size}",
                    f"{field}.header.size",
                )
            if header.sha256 and header.sha256.lower() != writer.sha256:
                refuse(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "content does not match the announced sha256",
                    f"{field}.header.sha256",
                )
            await _to_the_end(writer.close)  # flush and fsync: seconds for a large file
            return writer, header
        except BaseException:
            # A refusal above, or the client went away: the partial upload is gone before the
            # error leaves.
            if writer is not None:
                await _drop_off_loop(pipe, writer)
            raise

    async def _store_upload(self, tenant, writer, header, kind, fmt, info) -> pb.Artifact:
        """Commits the upload's bytes and writes the tenant's record of them. Content the
        tenant holds as the other upload kind (a file valid as both a model and a dataset) is
        refused, in the record's own script (two such uploads at once cannot both pass): one
        record per content would change kind under the jobs that name it. Its bytes stay: the
        record held points to them."""
        try:
            artifact_id = await _to_the_end(writer.commit)
        except BaseException:
            await _drop_off_loop(None, writer)
            raise
        info = {**info, "inspection": self._inspection}  # which code and limits passed it (see _held)
        record = ArtifactRecord(
            artifact_id,
            kind,
            fmt,
            convert.safe_filename(header.filename),
            writer.size,
            time.time(),
            info,
            crc32=writer.crc32,
        )
        try:
            await self.store.put_artifact(tenant, record, refuse=_other_upload_kinds(kind))
        except HeldAsAnotherKind as held:
            raise _held_as_another_kind(artifact_id, held.kind, kind) from None
        log.info("stored %s artifact %s (%d bytes) for %s", fmt, artifact_id, writer.size, tenant)
        return record.to_proto()

    # -- uploads and downloads -------------------------------------------------------------

    async def _inspect(self, writer, inspect):
        """Runs ``inspect(path, max_decompressed)`` on a received file; a refusal removes the
        file and answers INVALID_ARGUMENT."""
        try:
            return await _to_the_end(inspect, writer.path, self.settings.max_decompressed_bytes)
        except modelcheck.ModelRejected as exc:
            await _drop_off_loop(None, writer)
            raise model_refused(exc) from None
        except BaseException:
            await _drop_off_loop(None, writer)
            raise

    async def UploadModel(self, request_iterator, context):
        tenant = await self._tenant(context)
        async with self._slot(self.uploads, tenant):
            try:
                return await self._upload_model(tenant, request_iterator)
            except _Held as held:
                return held.artifact

    async def _upload_model(self, tenant: str, request_iterator) -> pb.Artifact:
        async with self._reservation(tenant, "model") as quota:
            writer, header = await self._receive(
                request_iterator, "model", quota, tenant=tenant, kind=pb.ARTIFACT_KIND_MODEL
            )

            def inspect(path, max_decompressed):
                info = modelcheck.inspect_model(path, max_decompressed, self.settings.max_config_bytes)
                if problem := _misnamed(header.filename, info.format):
                    raise modelcheck.ModelRejected(problem)
                return info

            info = await self._inspect(writer, inspect)
            return await self._store_upload(tenant, writer, header, pb.ARTIFACT_KIND_MODEL, info.format, info.to_dict())

    async def UploadDataset(self, request_iterator, context):
        tenant = await self._tenant(context)
        async with self._slot(self.uploads, tenant):
            # the CRCs of the .npz's stored arrays are computed as it arrives, not re-read after
            members = zipscan.StoredMembers()
            async with self._reservation(tenant, "dataset") as quota:
                try:
                    writer, header = await self._receive(
                        request_iterator, "dataset", quota, [members], tenant=tenant, kind=pb.ARTIFACT_KIND_DATASET
                    )
                except _Held as held:
                    return held.artifact
                arrays = await self._inspect(
                    writer,
                    lambda path, max_decompressed: modelcheck.inspect_dataset(path, max_decompressed, members.checked),
                )
                return await self._store_upload(
                    tenant, writer, header, pb.ARTIFACT_KIND_DATASET, "npz", {"arrays": arrays}
                )

    async def DownloadArtifact(self, request, context):
        tenant = await self._tenant(context)
        record = await self._artifact(tenant, request.artifact_id, "artifact_id")
        if not 0 <= request.offset <= record.size:
            raise Failure(grpc.StatusCode.OUT_OF_RANGE, f"offset must be in [0, {record.size}], got {request.offset}")
        # each chunk leaves serialized, framed in the reading thread with one copy of its bytes
        frame = functools.partial(download_chunk, total_size=record.size, sha256=record.id, crc32=record.crc32)
        # A whole download is checked against the CRC-32 recorded at upload before its last chunk
        # goes: bytes changed behind the service's back at their size are DATA_LOSS, not a file
        # the client refuses, and are set aside, so that an upload of the file stores it anew.
        check = _WholeCrc(frame, record.crc32) if request.offset == 0 and record.crc32 is not None else None
        async with self._slot(self.downloads, tenant):
            # closed on every way out: its read-ahead spare and file go back now, not at garbage collection
            chunks = (
                self.blobs.read(record.id, request.offset, self.settings.chunk_size, record.size, check, check.opened)
                if check is not None
                else self.blobs.read(record.id, request.offset, self.settings.chunk_size, record.size, frame)
            )
            stall = _StallWatch(context, self.settings.download_idle_timeout_s)
            try:
                async for message in chunks:
                    if check is not None and not check.holds(record.size):
                        await self._set_aside(record, check)
                    stall.since = time.monotonic()
                    yield message  # back once gRPC took it: the client's window had room
                    stall.since = None
            except objectstore.missing_errors():
                # A bucket that is gone answers 404 to every GET, as for a lost object: that is the
                # store's outage (UNAVAILABLE, which the probe raises), not this artifact's loss.
                await asyncio.to_thread(self.blobs.probe)
                log.error("artifact %s has a record but its bytes are gone from the artifact store", record.id)
                raise Failure(
                    grpc.StatusCode.DATA_LOSS, f"artifact {record.id}: its bytes are missing from the artifact store"
                ) from None
            except objectstore.CorruptArtifact as exc:
                log.error("artifact %s: its bytes in the artifact store are not the ones recorded: %s", record.id, exc)
                raise Failure(
                    grpc.StatusCode.DATA_LOSS,
                    f"artifact {record.id}: its bytes in the artifact store are not the {record.size} recorded "
                    "(changed behind the service's back)",
                ) from None
            finally:
                await chunks.aclose()
                stall.close()
                if stall.fired:
                    log.info(
                        "ended a download of %s for %s: the client took no chunk for %g s",
                        record.id,
                        tenant,
                        stall.idle_s,
                    )

    async def _set_aside(self, record: ArtifactRecord, check: _WholeCrc) -> NoReturn:
        """Bytes that no longer match their record at their size: moved out of the store's way
        (an upload of the file stores it anew), and DATA_LOSS."""
        try:
            # only the version this download read: the content stored again since stays
            where = await asyncio.to_thread(self.blobs.quarantine, record.id, check.version)
        except FileNotFoundError:
            where = "already set aside"  # another download found it first
        except Exception:  # the bytes read are still not the ones recorded
            log.error(
                "artifact %s: its bytes changed behind the service's back; not set aside", record.id, exc_info=True
            )
            raise Failure(
                grpc.StatusCode.DATA_LOSS,
                f"artifact {record.id}: its bytes changed behind the service's back, and could not be set aside "
                "(see the server log)",
            ) from None
        if where is None:
            where = "not set aside: stored again since this download read them"
        log.error(
            "artifact %s: its bytes in the artifact store have CRC-32 %08x, not the %08x recorded; set aside: %s",
            record.id,
            check.value,
            record.crc32,
            where,
        )
        raise Failure(
            grpc.StatusCode.DATA_LOSS,
            f"artifact {record.id}: its bytes changed behind the service's back and were set aside: upload the "
            "file again",
        )

    async def DeleteArtifact(self, request, context):
        tenant = await self._tenant(context)
        record = await self._artifact(tenant, request.artifact_id, "artifact_id")
        try:
            await self.store.delete_artifact(tenant, record.id, release=True)
        except ArtifactInUse as used:
            raise Failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"artifact_id: {used.who} reads this artifact and has not ended; delete it once it has (or cancel it)",
            ) from None
        log.info("deleted the record of artifact %s for %s", record.id, tenant)
        return record.to_proto()

    async def GetArtifact(self, request, context):
        tenant = await self._tenant(context)
        return (await self._artifact(tenant, request.artifact_id, "artifact_id")).to_proto()

    async def ListArtifacts(self, request, context):
        tenant = await self._tenant(context)
        if not 0 <= request.page_size <= 500:
            raise Invalid([("page_size", f"must be in [0, 500], got {request.page_size}")])
        if violations := convert.unknown_enums(request):
            raise Invalid(violations)
        after = _artifact_cursor(request.page_token) if request.page_token else None
        page, following = await self.store.artifacts_page(tenant, request.kind, after, request.page_size or 50)
        answer = pb.ListArtifactsResponse(
            stored_bytes=await self.store.stored_bytes(tenant),
            quota_bytes=self.settings.max_stored_bytes_per_tenant,
        )
        answer.artifacts.extend(record.to_proto() for record in page)  # read without their info: no summaries
        if following is not None:
            answer.next_page_token = f"{following[0]!r}:{following[1]}"
        return answer

    # -- jobs ------------------------------------------------------------------------------

    async def _check_inputs(self, tenant: str, spec: pb.JobSpec) -> tuple[ArtifactRecord, plan.DatasetFacts]:
        """The model and dataset exist for this tenant, and the spec (with its defaults) fits
        them: shapes, labels, selected layers, the schedule against the step count."""
        model = await self._artifact(tenant, spec.model_id, "spec.model_id")
        if model.kind == pb.ARTIFACT_KIND_DATASET or model.format not in formats.MODEL_SUFFIXES.values():
            raise Invalid([("spec.model_id", "this artifact is not a .keras or .h5 model")])
        if spec.dataset.WhichOneof("source") == "artifact_id":
            field = "spec.dataset.artifact_id"
            data = await self._artifact(tenant, spec.dataset.artifact_id, field)
            if data.kind != pb.ARTIFACT_KIND_DATASET:
                raise Invalid([(field, "this artifact is not an uploaded dataset")])
            facts = plan.DatasetFacts.of_upload(data.info)
        else:
            facts = plan.DatasetFacts.of_builtin(spec.dataset.builtin)
        violations = plan.check(spec, model.info, facts)
        if violations:
            raise Invalid(violations)
        return model, facts

    async def record(
        self,
        tenant: str,
        job: pb.Job,
        request: pb.CreateJobRequest,
        *,
        max_active: int | None = None,
    ) -> tuple[pb.Job, bool]:
        """Stores the new ``job`` made for ``request``, or returns the job its idempotency key
        already made (ALREADY_EXISTS when that key came with a different request); and whether
        it is new. RESOURCE_EXHAUSTED when the tenant has its most active jobs (decided with the
        record, so concurrent calls cannot all pass): ``max_active`` of them when given (a sweep's
        trials: one more while their search job counts; 0 = no bound), else the tenant's cap."""
        job.created_at.GetCurrentTime()
        fingerprint = convert.request_fingerprint(request)
        most = self.settings.max_active_jobs_per_tenant if max_active is None else max_active
        try:
            job, created = await self.store.create(
                tenant, job, request.idempotency_key, fingerprint, max_active=most, queue=self.settings.queue
            )
        except TooManyActiveJobs as exc:
            raise Exhausted(str(exc), self.settings.retry_after_s) from None
        except InputGone as gone:
            field = "spec.model_id" if gone.args[0] == job.spec.model_id else "spec.dataset.artifact_id"
            raise Failure(
                grpc.StatusCode.NOT_FOUND, f"{field}: no artifact {gone.args[0]} (deleted just now)"
            ) from None
        if not created and await self.store.fingerprint_of(job.id) != fingerprint:
            raise Failure(
                grpc.StatusCode.ALREADY_EXISTS,
                f"idempotency_key was used for a different request (job {job.id})",
            )
        return job, created

    async def CreateJob(self, request, context):
        return await self.create_job(await self._tenant(context), request)

    async def check_active_jobs(self, tenant: str) -> None:
        """RESOURCE_EXHAUSTED when the tenant has ``max_active_jobs_per_tenant`` jobs queued,
        running or being cancelled, for CreateSweep (a sweep is no job record; a job's own
        record is bounded in the script that writes it, :meth:`record`)."""
        cap = self.settings.max_active_jobs_per_tenant
        if not cap:
            return
        active = await self.store.active_jobs(tenant)
        if active >= cap:
            raise Exhausted(str(TooManyActiveJobs(active)), self.settings.retry_after_s)

    async def create_job(
        self, tenant: str, request: pb.CreateJobRequest, sweep_id: str = "", max_active: int | None = None
    ) -> pb.Job:
        """CreateJob for ``tenant``; sweeps create their trials through it too, ``max_active``
        their bound on the tenant's active jobs (0 = none; None = the tenant's cap)."""
        violations = validation.validate_request(request)
        named = {field for field, _ in violations}
        violations += [v for v in convert.unknown_enums(request) if v[0] not in named]
        if violations:
            raise Invalid(violations)
        if validation.has_budget(request.spec) and not sweep_id:
            if self.searches is None:
                raise Failure(grpc.StatusCode.UNIMPLEMENTED, "this server runs no sweeps, so no budget search")
            return await self.searches.create_search(tenant, request)
        spec = validation.with_defaults(request.spec)
        model, facts = await self._check_inputs(tenant, spec)
        violations = recipe.resolve(
            spec, plan.steps_per_epoch(spec, facts), plan.pruned_layer_weights(spec, model.info)
        )
        if violations:
            raise Invalid(violations)
        if request.validate_only:
            planned = plan.make_plan(spec, model.info, facts)
            limit, whose = validation.time_limit(spec, self.settings.job_time_limit_s)
            if limit and planned.estimated_seconds > limit:
                planned.warnings.append(
                    f"the estimate ({planned.estimated_seconds:.0f} s) is over {whose} ({limit:g} s): "
                    "it may fail with DEADLINE_EXCEEDED"
                )
            return pb.Job(spec=spec, labels=request.labels, plan=planned)
        job, created = await self.record(
            tenant,
            pb.Job(id=new_job_id(), spec=spec, labels=request.labels, sweep_id=sweep_id),
            request,
            max_active=max_active,
        )
        # A retry with the same key also repairs a job whose first enqueue failed; of
        # concurrent calls with the key, one sends.
        if not await self.store.is_enqueued(job.id) and await self.store.claim_send(job.id):
            try:
                if not await self.store.is_enqueued(job.id):  # sent by a caller whose lease ended
                    await asyncio.to_thread(
                        self.celery.send_task, tasks.PRUNE, args=[job.id], queue=self.settings.queue
                    )
                    await self.store.mark_enqueued(job.id)
            except BaseException:
                await self.store.release_send(job.id)
                raise
        log.info("job %s %s for %s", job.id, "created" if created else "returned again", tenant)
        # The plan's warnings (a softmax output under a loss that takes logits, ...) in the answer
        # only: a caller that does not follow the job hears them too.
        job.plan.warnings.extend(plan.make_plan(spec, model.info, facts).warnings)
        return job

    async def GetJob(self, request, context):
        tenant = await self._tenant(context)
        return await self._job(tenant, request.job_id)

    async def ListJobs(self, request, context):
        tenant = await self._tenant(context)
        if not 0 <= request.page_size <= 500:
            raise Invalid([("page_size", f"must be in [0, 500], got {request.page_size}")])
        # Filters as bounded as what they match: no job has more labels, and a request naming
        # thousands of them (or of states) would cost the server's loop, not Redis.
        if len(request.states) > len(pb.JobState.values()):
            raise Invalid([("states", f"at most {len(pb.JobState.values())} states, got {len(request.states)}")])
        if violations := validation.validate_metadata(request.labels, ""):
            raise Invalid(violations)
        if violations := convert.unknown_enums(request):
            raise Invalid(violations)
        if request.page_token and not _JOB_ID.fullmatch(request.page_token):
            raise Invalid([("page_token", "not a token this service returned")])
        states = set(request.states)
        jobs, token = await self.store.list(
            tenant,
            request.page_size or 50,
            request.page_token,
            lambda job: convert.job_matches(job, states, request.labels),
            states=states,
            labels=request.labels,
        )
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def WatchJob(self, request, context):
        tenant = await self._tenant(context)
        job = await self._job(tenant, request.job_id)
        after = request.after_event_id
        if after and not _is_event_id(after):
            raise Invalid([("after_event_id", f"not an event id (<ms>-<seq>, each below 2^64): {after!r}")])
        async with self._slot(self.watches, tenant):
            async for event in self.hub.follow(tenant, job.id, after, self.settings.watch_recheck_s):
                yield event

    async def CancelJob(self, request, context):
        return await self.cancel_job(await self._tenant(context), request.job_id)

    async def cancel_job(self, tenant: str, job_id: str, reason: str = "") -> pb.Job:
        """CancelJob; ``reason`` is the error message of a job cancelled before a worker took
        it (a sweep's trial it no longer needs), in place of the plain one."""
        job = await self._job(tenant, job_id)
        if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED):
            raise Failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {job.id} already ended {pb.JobState.Name(job.state).removeprefix('JOB_STATE_')}",
            )
        if job.search_sweep_id and self.searches is not None:
            return await self.searches.cancel_search(tenant, job)
        await self.store.request_cancel(job.id)

        def cancel(current: pb.Job):
            if current.state == pb.JOB_STATE_QUEUED:
                message = (
                    f"cancelled while queued again after attempt {current.attempt} was lost"
                    if current.attempt
                    else "cancelled before it started"
                )
                if reason:
                    message = reason
                return [
                    state_event(current, pb.JOB_STATE_CANCELLED, pb.JobError(code=code_pb2.CANCELLED, message=message))
                ]
            if current.state == pb.JOB_STATE_RUNNING:
                return [state_event(current, pb.JOB_STATE_CANCELLING)]
            return []

        after = await self.store.update(tenant, job.id, cancel)
        if after.state == pb.JOB_STATE_CANCELLED and after.attempt and job.state != pb.JOB_STATE_CANCELLED:
            # An attempt ran and was lost: what it left (checkpoints, exports stored as it died)
            # goes now; no worker will run the job again to clear it.
            await self.store.take_back_exports(job.id, tenant)
            await asyncio.to_thread(self.blobs.drop_checkpoints, job.id)
        return after
