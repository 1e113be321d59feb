"""The SDK's client: uploads, jobs, downloads over gRPC."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import uuid
from dataclasses import dataclass
from typing import Iterator

import grpc

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc

from .exceptions import IntegrityError, from_rpc_error
from .job import JobHandle

CHUNK = 1024 * 1024
_RETRY_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "pruning.v1.PruningService", "method": m}
                         for m in ("CreateJob", "GetJob", "ListJobs", "CancelJob")],
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


def _rpc(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    return wrapper


@dataclass
class ClientOptions:
    """Options of a :class:`Client`."""

    api_key: str | None = None
    """Sent as ``x-api-key``; maps to the tenant on the server."""
    tls: bool = False
    """Use TLS (with the system roots unless ``root_certificates`` is given)."""
    root_certificates: bytes | None = None
    """PEM roots for TLS."""
    timeout: float = 30.0
    """Deadline in seconds of each unary call."""


class Client:
    """Talks to a pruning server.

    Example:
        >>> with Client("localhost:50051") as client:          # doctest: +SKIP
        ...     model = client.upload_model("model.keras")
        ...     job = client.submit(job_spec(model.id))
        ...     print(job.result(timeout=600).pruned_accuracy)
    """

    def __init__(self, target: str, *, api_key: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, timeout: float = 30.0):
        self.target = target
        self.options = ClientOptions(api_key, tls, root_certificates, timeout)
        channel_options = [
            ("grpc.service_config", _RETRY_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        ]
        if tls:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, creds, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        self.stub = pb_grpc.PruningServiceStub(self._channel)
        self._metadata = (("x-api-key", api_key),) if api_key else ()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel is connected (raises Unavailable otherwise)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            from .exceptions import Unavailable

            raise Unavailable(f"no pruning server at {self.target} after {timeout}s") from None

    # -- uploads -----------------------------------------------------------------------------

    def _upload(self, method, path: os.PathLike | str, progress=None) -> pb.Artifact:
        """One pass over the file: the server hashes what it receives, and the id it answers
        (the sha256) must equal the hash of what was sent."""
        path = pathlib.Path(path)
        digest = hashlib.sha256()

        def requests():
            yield pb.UploadRequest(header=pb.UploadHeader(filename=path.name, size=path.stat().st_size))
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    yield pb.UploadRequest(chunk=chunk)
                    if progress:
                        progress(len(chunk))

        artifact = method(requests(), metadata=self._metadata)
        if artifact.id != digest.hexdigest():
            raise IntegrityError(f"the server stored {artifact.id} but {path} hashes to {digest.hexdigest()}")
        return artifact

    @_rpc
    def upload_model(self, path: os.PathLike | str, progress=None) -> pb.Artifact:
        """Uploads a .keras or .h5 model; returns its Artifact (``.id`` for job specs)."""
        return self._upload(self.stub.UploadModel, path, progress)

    @_rpc
    def upload_dataset(self, path: os.PathLike | str, progress=None) -> pb.Artifact:
        """Uploads an .npz with x_train, y_train, x_test, y_test."""
        return self._upload(self.stub.UploadDataset, path, progress)

    # -- jobs --------------------------------------------------------------------------------

    @_rpc
    def submit(self, spec: pb.JobSpec, *, labels: dict[str, str] | None = None,
               idempotency_key: str | None = None) -> JobHandle:
        """Creates a job and returns its handle. Retries are safe: the request carries an
        idempotency key (a fresh one unless given)."""
        request = pb.CreateJobRequest(spec=spec, labels=labels or {}, idempotency_key=idempotency_key or uuid.uuid4().hex)
        job = self.stub.CreateJob(request, timeout=self.options.timeout, metadata=self._metadata)
        return JobHandle(self, job.id, job)

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job."""
        return JobHandle(self, job_id)

    @_rpc
    def get_job(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.options.timeout, metadata=self._metadata)

    @_rpc
    def cancel_job(self, job_id: str) -> pb.Job:
        return self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=self.options.timeout, metadata=self._metadata)

    def list_jobs(self, *, states: list[int] | None = None, labels: dict[str, str] | None = None,
                  page_size: int = 50) -> Iterator[pb.Job]:
        """Every matching job, newest first, fetched page by page."""
        token = ""
        while True:
            page = self._list_page(
                pb.ListJobsRequest(page_size=page_size, page_token=token, states=states or [], labels=labels or {})
            )
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    @_rpc
    def _list_page(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        return self.stub.ListJobs(request, timeout=self.options.timeout, metadata=self._metadata)

    def watch_events(self, job_id: str, after_event_id: str = "") -> Iterator[pb.JobEvent]:
        """The raw event stream (no reconnect); see :meth:`JobHandle.watch`."""
        stream = self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_event_id=after_event_id), metadata=self._metadata)
        try:
            yield from stream
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            stream.cancel()

    # -- downloads ---------------------------------------------------------------------------

    @_rpc
    def download(self, artifact_id: str, dest: os.PathLike | str, *, resume: bool = True, progress=None) -> pathlib.Path:
        """Downloads an artifact to ``dest``, resuming a partial ``dest + '.part'``; the
        sha256 is checked before the file is moved into place."""
        dest = pathlib.Path(dest)
        part = dest.with_name(dest.name + ".part")
        offset = part.stat().st_size if resume and part.exists() else 0
        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                while block := f.read(CHUNK):
                    digest.update(block)
        with open(part, "ab" if offset else "wb") as f:
            for chunk in self.stub.DownloadArtifact(
                pb.DownloadArtifactRequest(artifact_id=artifact_id, offset=offset), metadata=self._metadata
            ):
                f.write(chunk.data)
                digest.update(chunk.data)
                if progress:
                    progress(len(chunk.data), chunk.total_size)
        if digest.hexdigest() != artifact_id:
            part.unlink()
            raise IntegrityError(f"downloaded {artifact_id} does not match its sha256; removed")
        os.replace(part, dest)
        return dest
