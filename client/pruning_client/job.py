"""A handle on a submitted job."""

from __future__ import annotations

import os
import pathlib
import time
from typing import TYPE_CHECKING, Iterator

from pruning.v1 import pruning_pb2 as pb

from .exceptions import DeadlineExceeded, JobCancelled, JobFailed, JobTimeout, Unavailable
from .results import PruneResult

if TYPE_CHECKING:
    from .client import Client

TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
RECONNECT_DELAYS = (0.2, 0.5, 1, 2, 5)


def is_terminal_event(event: pb.JobEvent) -> bool:
    return event.WhichOneof("kind") == "state_change" and event.state_change.to in TERMINAL


class JobHandle:
    """Follows one job: ``status()``, ``watch()``, ``cancel()``, ``result()``, ``download()``."""

    def __init__(self, client: "Client", job_id: str, job: pb.Job | None = None):
        self.client = client
        self.id = job_id
        self._job = job
        self.last_event_id = ""

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def status(self) -> pb.Job:
        """The job record now (state, progress, error, result)."""
        self._job = self.client.get_job(self.id)
        return self._job

    def cancel(self) -> pb.Job:
        self._job = self.client.cancel_job(self.id)
        return self._job

    def watch(self, after_event_id: str | None = None, *, max_reconnects: int = 20) -> Iterator[pb.JobEvent]:
        """Yields the job's events until it ends. A dropped stream is resumed from the last
        event id seen, so no event is missed or repeated."""
        if after_event_id is not None:
            self.last_event_id = after_event_id
        failures = 0
        while True:
            try:
                for event in self.client.watch_events(self.id, self.last_event_id):
                    failures = 0
                    self.last_event_id = event.id
                    yield event
                    if is_terminal_event(event):
                        return
                if self.status().state in TERMINAL:
                    return
            except (Unavailable, DeadlineExceeded):
                if failures >= max_reconnects:
                    raise
                time.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1

    def wait(self, timeout: float | None = None) -> pb.Job:
        """Blocks until the job ends; returns the final record."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.status()
            if job.state in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"job {self.id} still {pb.JobState.Name(job.state)} after {timeout}s")
            time.sleep(0.5)

    def result(self, timeout: float | None = None) -> PruneResult:
        """Waits for the job and returns its typed result.

        Raises:
            JobFailed: the job failed (``job_code`` holds the google.rpc code).
            JobCancelled: the job was cancelled.
            JobTimeout: ``timeout`` seconds passed first.
        """
        job = self.wait(timeout)
        if job.state == pb.JOB_STATE_FAILED:
            raise JobFailed(f"job {self.id} failed: {job.error.message}", job_code=job.error.code, job=job)
        if job.state == pb.JOB_STATE_CANCELLED:
            raise JobCancelled(f"job {self.id} was cancelled", job=job)
        return PruneResult.from_proto(job.result)

    def download(self, dest: os.PathLike | str, *, fmt: str | None = None) -> pathlib.Path:
        """Downloads the pruned model (or the export of format ``fmt``) to a file or into a
        directory."""
        result = self.result()
        artifacts = {a.format: a for a in result.raw.artifacts}
        artifact = artifacts[fmt] if fmt else result.raw.artifacts[0]
        dest = pathlib.Path(dest)
        if dest.is_dir():
            suffix = {"keras": ".keras", "h5": ".h5", "tflite": ".tflite", "tflite_int8": ".int8.tflite"}
            dest = dest / f"pruned-{self.id}{suffix.get(artifact.format, '.' + artifact.format)}"
        return self.client.download(artifact.id, dest)
