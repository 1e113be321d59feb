"""The asyncio client (on ``grpc.aio``): the same surface as :class:`pruning_client.Client`,
with coroutines and async iterators.

Requests, credentials, result parsing, exception mapping and the stream-following logic are
the sync client's (private helpers in :mod:`pruning_client.client`, :mod:`pruning_client.job`
and :mod:`pruning_client.sweeps`); only the I/O differs.

Example:
    >>> import asyncio                                        # doctest: +SKIP
    >>> from pruning_client import job_spec
    >>> from pruning_client.aio import AsyncClient
    >>> async def main() -> None:
    ...     async with AsyncClient("localhost:50051") as client:
    ...         model = await client.upload_model("mnist.keras")
    ...         job = await client.submit(job_spec(model.id))
    ...         async for event in job.watch():
    ...             print(event.WhichOneof("kind"))
    ...         print((await job.result(timeout=600)).pruned_accuracy)
    ...         await job.download("out/")
    >>> asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pathlib
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

import grpc
import grpc.aio

from pruning import wire
from pruning.files import DirectWriter
from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc

from .client import (
    DOWNLOAD_RESUMES,
    RESUME_BACKOFF_S,
    ClientOptions,
    DownloadProgress,
    UploadProgress,
    _Behind,
    _create_job_request,
    _Download,
    _list_artifacts_request,
    _list_jobs_request,
    _unreached,
    _Upload,
    _validate_request,
    idle_error,
)
from .exceptions import (
    DeadlineExceeded,
    JobTimeout,
    OutOfRange,
    PruningError,
    ResourceExhausted,
    Unavailable,
    rpc_errors,
)
from .job import (
    MAX_RECONNECTS,
    TERMINAL,
    _all_dests,
    _artifact_dest,
    _BaseHandle,
    _Cursor,
    _outcome,
    is_terminal,
    pick_export,
    wait_bound,
)
from .results import JobPlan, PruneResult
from .sources import DatasetSource, ModelSource, dataset_file, model_file
from .specs import exports
from .sweeps import _RETRIED, _BaseSweepHandle, outcome, watch_request
from .sweeps import create_request as create_sweep_request
from .sweeps import list_request as list_sweeps_request

__all__ = ["AsyncClient", "AsyncJobHandle", "AsyncSweepHandle"]

_LOCK_POLL_S = 0.1  # how often a download waiting for another one of the same file looks again

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


def _rpc(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with rpc_errors():
            return await method(*args, **kwargs)

    return wrapper


class AsyncJobHandle(_BaseHandle["AsyncClient"]):
    """Follows one job from asyncio code: the coroutine twin of :class:`pruning_client.JobHandle`.

    Example:
        >>> job = await client.submit(job_spec(model.id))    # doctest: +SKIP
        >>> async for event in job.watch():
        ...     print(event.WhichOneof("kind"))
        >>> (await job.result(timeout=600)).pruned_kernel_sparsity
        0.8
    """

    client: AsyncClient

    async def status(self) -> pb.Job:
        """The job record now (state, progress, error, result): one GetJob."""
        self._job = await self.client.get_job(self.id)
        return self._job

    async def done(self) -> bool:
        """Whether the job has ended (one GetJob)."""
        return is_terminal(await self.status())

    async def cancel(self) -> pb.Job:
        """Asks the job to stop; returns the record (CANCELLED, or CANCELLING while it runs)."""
        self._job = await self.client.cancel_job(self.id)
        return self._job

    async def watch(
        self, after_event_id: str | None = None, *, max_reconnects: int = MAX_RECONNECTS, timeout: float | None = None
    ) -> AsyncGenerator[pb.JobEvent, None]:
        """Yields the job's events until it ends, resuming a dropped stream from the last event
        id seen; JobTimeout once ``timeout`` seconds passed with the job not ended."""
        if after_event_id is not None:
            self.last_event_id = after_event_id
        cursor = _Cursor(self.last_event_id, max_reconnects=max_reconnects, timeout=timeout)
        async with contextlib.aclosing(self._follow(cursor)) as events:
            async for event in events:
                self.last_event_id = event.id
                yield event

    async def _follow(self, cursor: _Cursor) -> AsyncGenerator[pb.JobEvent, None]:
        while True:
            ended = None  # the record read when a stream ended without a terminal event
            try:
                stream = self.client.watch_events(self.id, cursor.after, timeout=cursor.remaining())
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        terminal = cursor.seen(event)
                        yield event
                        if terminal:
                            return
                ended = await self.status()
                if is_terminal(ended):
                    return
                delay = cursor.backoff(None)
            except (Unavailable, DeadlineExceeded, ResourceExhausted) as error:  # the last: no watch slot free
                delay = cursor.backoff(error)
            if cursor.expired():
                job = ended if ended is not None else await self.status()
                if is_terminal(job):
                    return
                raise cursor.timed_out(job)
            await asyncio.sleep(delay)

    async def wait(self, timeout: float | None = None, *, max_reconnects: int = MAX_RECONNECTS) -> pb.Job:
        """Follows the job's events until it ends, then returns the final record (one GetJob).

        Raises:
            JobTimeout: ``timeout`` seconds passed first.
        """
        final = self._final()
        if final is not None:
            return final
        cursor = _Cursor(self.last_event_id, max_reconnects=max_reconnects, timeout=timeout)
        async with contextlib.aclosing(self._follow(cursor)) as events:
            async for _ in events:
                pass
        final = self._final()
        return final if final is not None else await self.status()

    async def result(self, timeout: float | None = None) -> PruneResult:
        """Waits for the job and returns its typed result (JobFailed, JobCancelled or JobTimeout
        otherwise)."""
        return _outcome(await self.wait(timeout))

    async def download(self, dest: os.PathLike[str] | str, fmt: str | None = None) -> pathlib.Path:
        """Downloads the pruned model (or the export of format ``fmt``) to a file, or into a
        directory (an existing one, or a path ending with a separator) as ``pruned-<job id><suffix>``."""
        artifact = pick_export(self.id, (await self.result()).raw.artifacts, fmt, dest)
        return await self.client.download(artifact.id, _artifact_dest(self.id, artifact, dest))

    async def download_all(self, directory: os.PathLike[str] | str) -> list[pathlib.Path]:
        """Downloads every export into ``directory``; returns the files, the pruned model first."""
        result = await self.result()
        return [
            await self.client.download(a.id, path)
            for a, path in _all_dests(self.id, exports(result.raw.artifacts), directory)
        ]


class AsyncSweepHandle(_BaseSweepHandle["AsyncClient"]):
    """A sweep from asyncio code: the coroutine twin of :class:`pruning_client.SweepHandle`.

    Example:
        >>> sweep = await client.create_sweep(sweep_spec(job_spec(model.id), sparsities=[0.5, 0.8]))  # doctest: +SKIP
        >>> async for snapshot in sweep.watch():
        ...     print(len(snapshot.trials))
        >>> [t.pruned_accuracy for t in (await sweep.result(timeout=900)).trials]
        [0.97, 0.95]
    """

    client: AsyncClient

    async def get(self) -> pb.Sweep:
        """The sweep now."""
        self.last = await self.client.get_sweep(self.id)
        return self.last

    async def cancel(self) -> pb.Sweep:
        """Cancels the sweep and every trial still going."""
        self.last = await self.client.cancel_sweep(self.id)
        return self.last

    async def watch(self, *, reconnect_delay: float = 1.0) -> AsyncGenerator[pb.Sweep, None]:
        """Every change of the sweep until it ends; reconnects after UNAVAILABLE and resumes
        after the last version seen."""
        seen = 0
        while True:
            call = self.client.sweep_stub.WatchSweep(watch_request(self.id, seen), metadata=self.client._metadata)
            try:
                with rpc_errors():
                    async for sweep in call:
                        seen, self.last = sweep.version, sweep
                        yield sweep
                        if sweep.state in TERMINAL:
                            return
            except PruningError as error:
                if error.code not in _RETRIED:
                    raise
                await asyncio.sleep(reconnect_delay)
            finally:
                call.cancel()

    async def result(self, timeout: float | None = None) -> pb.Sweep:
        """Follows the sweep to its end and returns it (its trials are the curve, and
        ``chosen_trial`` the answer). Raises JobCancelled for a cancelled sweep, JobFailed for a
        failed one, JobTimeout (a TimeoutError) after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._follow(), wait_bound(timeout))
        except asyncio.TimeoutError as error:  # noqa: UP041 (not the builtin TimeoutError before 3.11)
            raise JobTimeout(f"sweep {self.id} still running after {timeout} s", sweep=self.last) from error
        return outcome(self.last if self.last is not None else await self.get())

    async def _follow(self) -> None:
        async with contextlib.aclosing(self.watch()) as sweeps:
            async for _ in sweeps:
                pass


@contextlib.asynccontextmanager
async def _off_loop(manager: contextlib.AbstractContextManager[_T]) -> AsyncIterator[_T]:
    """``manager`` entered and left in a thread: saving a model or arrays, removing the files."""
    stack = contextlib.ExitStack()
    value = await asyncio.to_thread(stack.enter_context, manager)
    try:
        yield value
    finally:
        await asyncio.to_thread(stack.close)


async def _next_within(items: AsyncIterator[_T], limit: float) -> _T:
    """The next item, or asyncio.TimeoutError after ``limit`` seconds. On Python 3.11 and later
    through ``asyncio.timeout``: ``wait_for`` there may swallow a cancellation of the task that
    comes as the item does (CPython gh-86296), and a cancelled download would go on."""
    if sys.version_info >= (3, 11):  # noqa: UP036 - the SDK runs on 3.10 too
        async with asyncio.timeout(limit):
            return await anext(items)
    return await asyncio.wait_for(anext(items), limit)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _wake(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
    """From gRPC's thread, once a call ended: settles ``done`` on its loop, unless that loop
    is closed already (its task gone with it)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, done)


def _written(behind: _Behind, f: DirectWriter, error: BaseException | None) -> None:
    """Waits for a download's writer and hasher to finish what they were given, then closes
    the file: in one thread, so that the file is never closed under a write."""
    try:
        behind.__exit__(type(error) if error else None, error, None)
    finally:
        f.close()


class AsyncClient:
    """Talks to a pruning server from asyncio code. Create it inside the event loop that uses
    it (``async with AsyncClient(...)``).

    Example:
        >>> async with AsyncClient("localhost:50051") as client:    # doctest: +SKIP
        ...     job = await client.submit(job_spec(model_id))
        ...     print((await job.result(timeout=600)).pruned_accuracy)
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
            self._channel = grpc.aio.secure_channel(target, creds, options=self.options.channel_options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=self.options.channel_options)
        self.stub = pb_grpc.PruningServiceStub(self._channel)
        self.sweep_stub = pb_grpc.SweepServiceStub(self._channel)
        self._transfers = wire.FramedCalls(self._channel)  # chunks framed by hand: fewer copies
        self._metadata = self.options.metadata
        self._upload_channel: grpc.Channel | None = None  # see _upload
        self._upload_calls: wire.FramedCalls | None = None

    async def close(self) -> None:
        await self._channel.close()
        if self._upload_channel is not None:
            self._upload_channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the channel is connected (raises Unavailable otherwise)."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError as error:  # noqa: UP041 (not the builtin TimeoutError before 3.11)
            raise Unavailable(f"no pruning server at {self.target} after {timeout}s") from error

    # -- uploads -----------------------------------------------------------------------------

    def _uploads(self) -> wire.FramedCalls:
        """Uploads go over a blocking channel of their own, made on first use. grpc.aio loses a
        server's early answer to a client-streaming call while the client still writes (an
        upload refused at its header, a full disk): the write's failure turns it into
        INTERNAL ("Internal error from Core", grpc/grpc#36066), half the time here, where the
        blocking stub reports the server's status every time."""
        if self._upload_calls is None:
            creds = self.options.credentials()
            options = self.options.channel_options
            channel = (
                grpc.secure_channel(self.target, creds, options=options)
                if creds is not None
                else grpc.insecure_channel(self.target, options=options)
            )
            self._upload_channel, self._upload_calls = channel, wire.FramedCalls(channel)
        return self._upload_calls

    async def _upload(self, which: str, path: os.PathLike[str] | str, progress: UploadProgress | None) -> pb.Artifact:
        """:meth:`pruning_client.Client._upload` off the loop: the file read, hashed and sent by
        threads, the call a blocking one (see :meth:`_uploads`) that a cancelled task cancels."""
        upload = await asyncio.to_thread(_Upload, path, progress, self.options.verify)
        if self.options.hash_first:
            await asyncio.to_thread(upload.hash)
        method = getattr(self._uploads(), which)
        requests = upload.pipelined()
        call = method.future(requests, timeout=upload.deadline(self.options.timeout), metadata=self._metadata)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        call.add_done_callback(lambda _: _wake(loop, done))
        try:
            await done
            return upload.check(call.result())
        except grpc.RpcError as error:
            upload.raise_read_error(error)
            raise
        finally:
            call.cancel()  # a cancelled task (nothing once the call ended)
            # answered before the last chunk (content already held): stop reading ahead now;
            # if gRPC's sender is still inside the iterator, collection closes it instead
            with contextlib.suppress(ValueError):
                requests.close()

    @_rpc
    async def upload_model(self, model: ModelSource, progress: UploadProgress | None = None) -> pb.Artifact:
        """Uploads a .keras or .h5 model (its path, or a Keras model object); returns its
        Artifact (``.id`` for job specs, ``.model`` the summary the service read from the
        file); see :meth:`pruning_client.Client.upload_model`. A model object is saved off the
        event loop."""
        async with _off_loop(model_file(model)) as path:
            return await self._upload("upload_model", path, progress)

    @_rpc
    async def upload_dataset(self, data: DatasetSource, progress: UploadProgress | None = None) -> pb.Artifact:
        """Uploads a dataset: an .npz's path or its arrays (saved off the event loop); see
        :meth:`pruning_client.Client.upload_dataset`."""
        async with _off_loop(dataset_file(data)) as path:
            return await self._upload("upload_dataset", path, progress)

    # -- jobs --------------------------------------------------------------------------------

    @_rpc
    async def submit(
        self, spec: pb.JobSpec, *, labels: Mapping[str, str] | None = None, idempotency_key: str | None = None
    ) -> AsyncJobHandle:
        """Creates a job and returns its handle (idempotent: the request carries a key)."""
        request = _create_job_request(spec, labels, idempotency_key)
        job = await self.stub.CreateJob(request, timeout=self.options.timeout, metadata=self._metadata)
        return AsyncJobHandle(self, job.id, job)

    @_rpc
    async def validate(self, spec: pb.JobSpec, *, labels: Mapping[str, str] | None = None) -> JobPlan:
        """Checks the spec against its model and dataset and returns the plan, creating and
        queueing nothing (InvalidArgument with ``field_violations`` otherwise); see
        :meth:`pruning_client.Client.validate`."""
        job = await self.stub.CreateJob(
            _validate_request(spec, labels), timeout=self.options.timeout, metadata=self._metadata
        )
        return JobPlan.from_proto(job.plan)

    def job(self, job_id: str) -> AsyncJobHandle:
        """A handle on an existing job."""
        return AsyncJobHandle(self, job_id)

    @_rpc
    async def get_job(self, job_id: str) -> pb.Job:
        """The job record now."""
        return await self.stub.GetJob(
            pb.GetJobRequest(job_id=job_id), timeout=self.options.timeout, metadata=self._metadata
        )

    @_rpc
    async def cancel_job(self, job_id: str) -> pb.Job:
        """Asks the job to stop; returns the record (CANCELLED, or CANCELLING while it runs)."""
        return await self.stub.CancelJob(
            pb.CancelJobRequest(job_id=job_id), timeout=self.options.timeout, metadata=self._metadata
        )

    cancel = cancel_job

    async def list_jobs(
        self, *, states: Iterable[int | str] | None = None, labels: Mapping[str, str] | None = None, page_size: int = 50
    ) -> AsyncGenerator[pb.Job, None]:
        """Every matching job, newest first, fetched page by page."""
        token = ""
        while True:
            page = await self._list_page(_list_jobs_request(states, labels, page_size, token))
            for job in page.jobs:
                yield job
            token = page.next_page_token
            if not token:
                return

    @_rpc
    async def _list_page(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        return await self.stub.ListJobs(request, timeout=self.options.timeout, metadata=self._metadata)

    async def watch_events(
        self, job_id: str, after_event_id: str = "", *, timeout: float | None = None
    ) -> AsyncGenerator[pb.JobEvent, None]:
        """The raw event stream (no reconnect); see :meth:`AsyncJobHandle.watch`."""
        call = self.stub.WatchJob(
            pb.WatchJobRequest(job_id=job_id, after_event_id=after_event_id), timeout=timeout, metadata=self._metadata
        )
        try:
            with rpc_errors():
                async for event in call:
                    yield event
        finally:
            call.cancel()

    # -- sweeps ------------------------------------------------------------------------------

    @_rpc
    async def create_sweep(
        self, spec: pb.SweepSpec, *, labels: Mapping[str, str] | None = None, idempotency_key: str | None = None
    ) -> AsyncSweepHandle:
        """Starts a sweep (see :func:`pruning_client.sweep_spec`) and returns its handle;
        see :meth:`pruning_client.Client.create_sweep`."""
        request = create_sweep_request(spec, labels, idempotency_key)
        sweep = await self.sweep_stub.CreateSweep(request, timeout=self.options.timeout, metadata=self._metadata)
        return AsyncSweepHandle(self, sweep.id, sweep)

    def sweep(self, sweep_id: str) -> AsyncSweepHandle:
        """A handle on an existing sweep."""
        return AsyncSweepHandle(self, sweep_id)

    @_rpc
    async def get_sweep(self, sweep_id: str) -> pb.Sweep:
        """The sweep now."""
        return await self.sweep_stub.GetSweep(
            pb.GetSweepRequest(sweep_id=sweep_id), timeout=self.options.timeout, metadata=self._metadata
        )

    @_rpc
    async def cancel_sweep(self, sweep_id: str) -> pb.Sweep:
        """Cancels the sweep and every trial that has not ended."""
        return await self.sweep_stub.CancelSweep(
            pb.CancelSweepRequest(sweep_id=sweep_id), timeout=self.options.timeout, metadata=self._metadata
        )

    async def list_sweeps(self, *, state: int = 0, page_size: int = 50) -> AsyncGenerator[pb.Sweep, None]:
        """Every sweep of the tenant (optionally in one state), newest first."""
        token = ""
        while True:
            page = await self._sweep_page(list_sweeps_request(state, page_size, token))
            for sweep in page.sweeps:
                yield sweep
            token = page.next_page_token
            if not token:
                return

    @_rpc
    async def _sweep_page(self, request: pb.ListSweepsRequest) -> pb.ListSweepsResponse:
        return await self.sweep_stub.ListSweeps(request, timeout=self.options.timeout, metadata=self._metadata)

    # -- downloads ---------------------------------------------------------------------------

    @_rpc
    async def get_artifact(self, artifact_id: str) -> pb.Artifact:
        """This tenant's record of an artifact: kind, format, file name, size, when stored,
        and a model's summary. NotFound when the tenant has no such artifact."""
        return await self.stub.GetArtifact(
            pb.GetArtifactRequest(artifact_id=artifact_id), timeout=self.options.timeout, metadata=self._metadata
        )

    @_rpc
    async def delete_artifact(self, artifact_id: str) -> pb.Artifact:
        """Deletes this tenant's record of an artifact and returns it; the bytes go once no
        tenant's record points to them. NotFound when the tenant has no such artifact."""
        return await self.stub.DeleteArtifact(
            pb.DeleteArtifactRequest(artifact_id=artifact_id), timeout=self.options.timeout, metadata=self._metadata
        )

    async def list_artifacts(
        self, *, kind: int | str | None = None, page_size: int = 100
    ) -> AsyncGenerator[pb.Artifact, None]:
        """This tenant's artifacts, newest first, page by page; see
        :meth:`pruning_client.Client.list_artifacts`."""
        token = ""
        while True:
            page = await self.artifacts_page(kind=kind, page_size=page_size, page_token=token)
            for artifact in page.artifacts:
                yield artifact
            token = page.next_page_token
            if not token:
                return

    @_rpc
    async def artifacts_page(
        self, *, kind: int | str | None = None, page_size: int = 100, page_token: str = ""
    ) -> pb.ListArtifactsResponse:
        """One page of :meth:`list_artifacts`, with ``stored_bytes`` and ``quota_bytes``."""
        return await self.stub.ListArtifacts(
            _list_artifacts_request(kind, page_size, page_token), timeout=self.options.timeout, metadata=self._metadata
        )

    @_rpc
    async def download(
        self,
        artifact_id: str,
        dest: os.PathLike[str] | str,
        *,
        resume: bool = True,
        progress: DownloadProgress | None = None,
        filename: str | None = None,
    ) -> pathlib.Path:
        """Downloads an artifact to ``dest`` (a file, or a directory to write it into: an existing
        one, or a path ending with a separator, created if missing), resuming a partial
        ``<dest>.<artifact_id[:16]>.part``; checked (``ClientOptions.verify``) before the move; a file
        already there with the artifact's content is kept; see
        :meth:`pruning_client.Client.download`."""
        download = await asyncio.to_thread(
            _Download, artifact_id, dest, filename=filename, resume=resume, verify=self.options.verify
        )
        try:
            try:
                # another download of this artifact to this file: waited for (polled on the loop,
                # so a cancelled task never leaves the lock taken by a thread behind it)
                while not download.lock(blocking=False):
                    await asyncio.sleep(_LOCK_POLL_S)
                await asyncio.to_thread(download.refresh)
                if await asyncio.to_thread(download.present, progress):
                    return download.dest
                for retry in range(DOWNLOAD_RESUMES + 1):
                    try:
                        try:
                            with rpc_errors():
                                await self._receive(download, progress)
                        except OutOfRange:
                            if not await asyncio.to_thread(download.restart):
                                raise
                            with rpc_errors():
                                await self._receive(download, progress)
                        break
                    except (Unavailable, DeadlineExceeded) as error:  # cut midway: resumed, as Client.download does
                        progressed = await asyncio.to_thread(download.reopen)
                        if retry == DOWNLOAD_RESUMES or not (progressed or _unreached(error)):
                            raise
                        await asyncio.sleep(RESUME_BACKOFF_S * 2**retry)
            except BaseException as error:
                download.drop_after(error)  # one stat: on the loop, cancelled or not
                raise
            return await asyncio.to_thread(download.finish)
        finally:
            download.release()

    async def _receive(self, download: _Download, progress: DownloadProgress | None) -> None:
        f = download.open()
        behind = download.behind(f)  # written (and hashed, by sha256) in threads behind the receiver
        try:
            behind.__enter__()
        except BaseException:
            f.close()
            raise
        limit = self.options.timeout
        error: BaseException | None = None
        try:
            call = self._transfers.download(download.request(), metadata=self._metadata)
            chunks = aiter(call)
            while True:
                try:  # a stalled server must not hold it forever
                    chunk = await _next_within(chunks, limit)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:  # noqa: UP041 (not the builtin TimeoutError before 3.11)
                    call.cancel()
                    raise idle_error(limit) from None
                data = download.take(chunk)
                await behind.aput(data)
                if progress:
                    progress(len(data), chunk.total_size)
        except BaseException as exc:  # noqa: BLE001 - raised below, once the file is still
            error = exc
        # What arrived is written and the file closed before the caller hears, however often the
        # task is cancelled meanwhile (at most PIPELINE chunks to write): a retry never meets a
        # file still growing, nor finds it empty while its bytes wait in the writer's buffer.
        finishing = asyncio.ensure_future(asyncio.to_thread(_written, behind, f, error))
        cancelled = False
        while not finishing.done():
            try:
                await asyncio.shield(finishing)
            except asyncio.CancelledError:
                cancelled = True
            except Exception:  # noqa: BLE001 - raised below, unless an earlier error stands
                break
        failure = finishing.exception()  # the writer's, the hasher's or the close's, if any
        with download.named_errors():  # a full disk names the partial file, as Client.download says it
            if error is not None:
                raise error
            if cancelled:
                raise asyncio.CancelledError
            if failure is not None:
                raise failure
