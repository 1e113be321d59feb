"""A handle on a submitted job.

The handle follows the job's event stream (WatchJob) rather than polling: ``watch()`` yields
the events, ``wait()`` / ``result()`` follow them until a terminal state and then read the
final record once. A dropped stream is resumed from the last event id seen. The private
helpers here (the stream cursor, outcome, artifact choice and naming) are shared with
:class:`pruning_client.aio.AsyncJobHandle`.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from pruning.v1 import pruning_pb2 as pb

from .exceptions import (
    DeadlineExceeded,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NotFound,
    PruningError,
    ResourceExhausted,
    Unavailable,
)
from .results import PruneResult
from .specs import export_format, export_format_name, exports

if TYPE_CHECKING:
    from .client import Client

__all__ = ["TERMINAL", "JobHandle", "is_terminal", "is_terminal_event"]

TERMINAL: Final = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
RECONNECT_DELAYS: tuple[float, ...] = (0.2, 0.5, 1, 2, 5)
MAX_RECONNECTS = 20

_C = TypeVar("_C")


def is_terminal(job: pb.Job) -> bool:
    """Whether the job has ended (SUCCEEDED, FAILED or CANCELLED)."""
    return job.state in TERMINAL


def is_terminal_event(event: pb.JobEvent) -> bool:
    """Whether the event is the job's move to a terminal state (the last event of its stream)."""
    return event.WhichOneof("kind") == "state_change" and event.state_change.to in TERMINAL


UNBOUNDED_WAIT_S: Final = 365 * 86400.0
"""A wait this long or longer (``float("inf")`` too) has no bound: gRPC takes no deadline so far off."""


def wait_bound(timeout: float | None) -> float | None:
    """``timeout`` (seconds to wait for a job or sweep to end) as the handles use it: None for
    no bound (also for one of ``UNBOUNDED_WAIT_S`` or more); ValueError for NaN or a negative."""
    if timeout is None:
        return None
    if not timeout >= 0:  # NaN fails this too
        raise ValueError(f"timeout must be a number of seconds >= 0 (or None: no bound), got {timeout!r}")
    return None if timeout >= UNBOUNDED_WAIT_S else float(timeout)


class _Cursor:
    """Where a followed event stream stands: the last event id, the reconnect budget and the
    deadline. The sync and asyncio handles drive it the same way."""

    def __init__(self, after: str, *, max_reconnects: int, timeout: float | None = None) -> None:
        self.after = after
        self.failures = 0
        self.max_reconnects = max_reconnects
        self.timeout = timeout = wait_bound(timeout)
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left for the next stream (None: no deadline)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def seen(self, event: pb.JobEvent) -> bool:
        """Records an event; True when it ends the job."""
        self.failures = 0
        self.after = event.id
        return is_terminal_event(event)

    def backoff(self, error: PruningError | None) -> float:
        """The delay before reconnecting; re-raises ``error`` once the reconnect budget is spent
        (unless the deadline has passed: the caller then reports a timeout)."""
        if error is not None and self.failures >= self.max_reconnects and not self.expired():
            raise error
        delay = RECONNECT_DELAYS[min(self.failures, len(RECONNECT_DELAYS) - 1)]
        self.failures += 1
        remaining = self.remaining()
        return delay if remaining is None else min(delay, remaining)

    def timed_out(self, job: pb.Job) -> JobTimeout:
        state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_")
        return JobTimeout(f"job {job.id} still {state} after {self.timeout:g} s", job=job)


def _outcome(job: pb.Job) -> PruneResult:
    """The typed result of a finished job, or JobFailed / JobCancelled."""
    if job.state == pb.JOB_STATE_FAILED:
        raise JobFailed(f"job {job.id} failed: {job.error.message}", job_code=job.error.code, job=job)
    if job.state == pb.JOB_STATE_CANCELLED:
        raise JobCancelled(f"job {job.id} was cancelled", job=job)
    return PruneResult.from_proto(job.result)


def _same_format(artifact: pb.Artifact, wanted: int) -> bool:
    try:
        return export_format(artifact.format) == wanted
    except ValueError:
        return False


# The file suffix of each export format (the longer first: ".int8.tflite" is not ".tflite")
_FORMAT_SUFFIXES = (
    (".int8.tflite", pb.EXPORT_FORMAT_TFLITE_INT8),
    (".tflite", pb.EXPORT_FORMAT_TFLITE),
    (".keras", pb.EXPORT_FORMAT_KERAS),
    (".hdf5", pb.EXPORT_FORMAT_H5),
    (".h5", pb.EXPORT_FORMAT_H5),
    (".zip", pb.EXPORT_FORMAT_SAVED_MODEL),
)
# Model files of formats the service does not export (another framework's, a frozen graph):
# a destination so named would get bytes its reader cannot take.
_FOREIGN_SUFFIXES = (".onnx", ".pb", ".pt", ".pth", ".safetensors", ".mlmodel", ".engine", ".trt", ".gguf", ".ckpt")


def format_name(artifact_format: str) -> str:
    """An artifact's format as export format names go ("saved_model" for "saved_model.zip"), or
    as it is when it names none (a report file's)."""
    try:
        return export_format_name(export_format(artifact_format))
    except ValueError:
        return artifact_format


def named_export(job_id: str, artifacts: Sequence[pb.Artifact], dest: os.PathLike[str] | str) -> pb.Artifact | None:
    """The export a destination file's suffix names (``model.tflite``: the TFLite export;
    ``model.int8.tflite`` the int8 one; ``model.zip`` the SavedModel), or None for a name
    without a model suffix. Raises NotFound for a suffix the job has no export of, or one of a
    format the service never exports (``model.onnx``, ``model.pb``), rather than write another
    format's bytes under that name."""
    name = pathlib.PurePath(dest).name.lower()
    suffix, wanted = next(((s, f) for s, f in _FORMAT_SUFFIXES if name.endswith(s)), ("", None))
    if wanted is None:
        foreign = next((s for s in _FOREIGN_SUFFIXES if name.endswith(s)), None)
        if foreign is not None:
            raise NotFound(
                f"{pathlib.PurePath(dest).name} names a {foreign} file, a format the service does not export "
                f"(job {job_id} has: {_formats(artifacts)}); name the file for one of them, or ask for a format"
            )
        return None
    for artifact in exports(artifacts):
        if _same_format(artifact, wanted):
            return artifact
    raise NotFound(
        f"{pathlib.PurePath(dest).name} names a {suffix} file, but job {job_id} has no {export_format_name(wanted)} "
        f"export (it has: {_formats(artifacts)}); name the file for one of them, or ask for a format"
    )


def pick_export(
    job_id: str, artifacts: Sequence[pb.Artifact], fmt: str | None, dest: os.PathLike[str] | str | None = None
) -> pb.Artifact:
    """The export of format ``fmt`` (any name export_format() accepts); without one, the
    export a destination file's suffix names (see :func:`named_export`), else the pruned model
    (the first export). Raises NotFound when the job has no such export."""
    if not artifacts:
        raise NotFound(f"job {job_id} has no exports")
    if fmt is None:
        named = named_export(job_id, artifacts, dest) if dest is not None and not _is_directory(dest) else None
        return named or artifacts[0]
    wanted = export_format(fmt)
    for artifact in exports(artifacts):
        if _same_format(artifact, wanted):
            return artifact
    raise NotFound(f"job {job_id} has no {fmt} export (it has: {_formats(artifacts)})")


def _formats(artifacts: Sequence[pb.Artifact]) -> str:
    return ", ".join(format_name(a.format) for a in exports(artifacts)) or "none"


def _artifact_suffix(artifact: pb.Artifact) -> str:
    """The suffix of the artifact's file name (".keras", ".int8.tflite"), else ``"." + format``."""
    name = pathlib.PurePosixPath(artifact.filename.replace("\\", "/")).name.strip(".")
    return "." + name.split(".", 1)[1] if "." in name else "." + (artifact.format or "bin")


def _is_directory(dest: os.PathLike[str] | str) -> bool:
    """Whether a download's ``dest`` names a directory: an existing one, or a path ending with
    a separator ("out/", which need not exist yet)."""
    return os.fspath(dest).endswith(("/", os.sep)) or pathlib.Path(dest).is_dir()


def _artifact_dest(job_id: str, artifact: pb.Artifact, dest: os.PathLike[str] | str) -> pathlib.Path:
    """``dest``, or ``dest/pruned-<job id><suffix>`` when it is a directory (the download
    creates it if missing, and removes it again, while empty, when it fails)."""
    target = pathlib.Path(dest)
    if not _is_directory(dest):
        return target
    return target / _pruned_name(job_id, artifact)


def _pruned_name(job_id: str, artifact: pb.Artifact) -> str:
    return f"pruned-{job_id}{_artifact_suffix(artifact)}"


def _all_dests(
    job_id: str, artifacts: Sequence[pb.Artifact], directory: os.PathLike[str] | str
) -> list[tuple[pb.Artifact, pathlib.Path]]:
    """A distinct file in ``directory`` (created by the first download if missing) for each artifact."""
    target = pathlib.Path(directory)
    out: list[tuple[pb.Artifact, pathlib.Path]] = []
    for artifact in artifacts:
        path = target / _pruned_name(job_id, artifact)
        if path in (p for _, p in out):
            path = target / f"pruned-{job_id}-{artifact.id[:16]}{_artifact_suffix(artifact)}"
        out.append((artifact, path))
    return out


class _BaseHandle(Generic[_C]):
    def __init__(self, client: _C, job_id: str, job: pb.Job | None = None) -> None:
        self.client = client
        """The client the handle calls through."""
        self.id = job_id
        """The job's id."""
        self._job = job
        self.last_event_id = ""
        """The id of the last event ``watch()`` yielded; the next ``watch()`` resumes after it."""
        self.warnings: list[str] = list(job.plan.warnings) if job is not None else []
        """What the service warned of when it created the job (its plan's warnings: a softmax
        output under a loss that takes logits, ...); empty for a handle made from an id."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    def _final(self) -> pb.Job | None:
        """The last record read, if it is terminal (a terminal job no longer changes)."""
        return self._job if self._job is not None and is_terminal(self._job) else None


class JobHandle(_BaseHandle["Client"]):
    """Follows one job: ``status()``, ``done()``, ``watch()``, ``cancel()``, ``wait()``,
    ``result()``, ``download()``.

    Example:
        >>> job = client.submit(job_spec(model.id))            # doctest: +SKIP
        >>> for event in job.watch():
        ...     print(event.WhichOneof("kind"))
        >>> job.result(timeout=600).pruned_kernel_sparsity
        0.8
    """

    client: Client

    def status(self) -> pb.Job:
        """The job record now (state, progress, error, result): one GetJob."""
        self._job = self.client.get_job(self.id)
        return self._job

    def done(self) -> bool:
        """Whether the job has ended (one GetJob)."""
        return is_terminal(self.status())

    def cancel(self) -> pb.Job:
        """Asks the job to stop; returns the record (CANCELLED, or CANCELLING while it runs)."""
        self._job = self.client.cancel_job(self.id)
        return self._job

    def watch(
        self, after_event_id: str | None = None, *, max_reconnects: int = MAX_RECONNECTS, timeout: float | None = None
    ) -> Iterator[pb.JobEvent]:
        """Yields the job's events until it ends. A dropped stream (UNAVAILABLE, DEADLINE_EXCEEDED)
        is resumed from the last event id seen, so no event is missed or repeated. Raises
        JobTimeout once ``timeout`` seconds passed with the job not ended."""
        if after_event_id is not None:
            self.last_event_id = after_event_id
        for event in self._follow(_Cursor(self.last_event_id, max_reconnects=max_reconnects, timeout=timeout)):
            self.last_event_id = event.id
            yield event

    def _follow(self, cursor: _Cursor) -> Iterator[pb.JobEvent]:
        while True:
            ended = None  # the record read when a stream ended without a terminal event
            try:
                for event in self.client.watch_events(self.id, cursor.after, timeout=cursor.remaining()):
                    terminal = cursor.seen(event)
                    yield event
                    if terminal:
                        return
                ended = self.status()
                if is_terminal(ended):
                    return
                delay = cursor.backoff(None)
            except (Unavailable, DeadlineExceeded, ResourceExhausted) as error:  # the last: no watch slot free
                delay = cursor.backoff(error)
            if cursor.expired():
                job = ended if ended is not None else self.status()
                if is_terminal(job):
                    return
                raise cursor.timed_out(job)
            time.sleep(delay)

    def wait(self, timeout: float | None = None, *, max_reconnects: int = MAX_RECONNECTS) -> pb.Job:
        """Follows the job's events until it ends, then returns the final record (one GetJob).

        Raises:
            JobTimeout: ``timeout`` seconds passed first.
        """
        final = self._final()
        if final is not None:
            return final
        for _ in self._follow(_Cursor(self.last_event_id, max_reconnects=max_reconnects, timeout=timeout)):
            pass
        final = self._final()
        return final if final is not None else self.status()

    def result(self, timeout: float | None = None) -> PruneResult:
        """Waits for the job and returns its typed result.

        Raises:
            JobFailed: the job failed (``job_code`` holds the google.rpc code).
            JobCancelled: the job was cancelled.
            JobTimeout: ``timeout`` seconds passed first.
        """
        return _outcome(self.wait(timeout))

    def download(self, dest: os.PathLike[str] | str, fmt: str | None = None) -> pathlib.Path:
        """Downloads the pruned model (or the export of format ``fmt``: "saved_model",
        "tflite_int8", ...) to a file, or into a directory (an existing one, or a path ending
        with a separator, created if missing) as ``pruned-<job id><suffix>``. Without ``fmt``, a
        file named with a model suffix gets the export it names (``model.tflite``), and
        NotFound when the job has none (as for a format it did not export)."""
        artifact = pick_export(self.id, self.result().raw.artifacts, fmt, dest)
        return self.client.download(artifact.id, _artifact_dest(self.id, artifact, dest))

    def download_all(self, directory: os.PathLike[str] | str) -> list[pathlib.Path]:
        """Downloads every export into ``directory``; returns the files, the pruned model first."""
        result = self.result()
        return [
            self.client.download(a.id, path)
            for a, path in _all_dests(self.id, exports(result.raw.artifacts), directory)
        ]
