"""The life of one job on a worker: claim it, run the pipeline, record the outcome.

Plain code with no Celery import. Every write after the claim is fenced by the attempt
number: a stale attempt (its worker was presumed dead and the job re-run) stops instead of
overwriting the newer one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator

from google.rpc import code_pb2

from pruning.v1 import pruning_pb2 as pb
from pruning_core import formats, telemetry, validation
from pruning_core import tasks as task_names
from pruning_core.blobs import sweep_unlocked
from pruning_core.objectstore import open_probe, open_store, unavailable_errors
from pruning_core.settings import Settings
from pruning_core.store import (
    TERMINAL,
    UPLOAD_KINDS,
    ArtifactRecord,
    JobNotFound,
    JobStore,
    StaleAttempt,
    last_event_age_s,
    make_event,
    state_event,
)

from . import shutdown
from .errors import STORE_ERRORS, Cancelled, JobDeadlineExceeded, JobInputError, WorkerStopping

log = logging.getLogger(__name__)
ARTIFACT_STORE_RETRY_S = 30.0  # an attempt the artifact store stopped starts again after this, doubled each time
# (to 5 min), until Settings.artifact_store_patience_s after the first stop of an outage (the store
# answering an attempt ends it)
# A store that answers an attempt and stops it again this many times (it lists, and refuses every
# export): the job fails rather than train again and again.
ARTIFACT_STORE_MAX_ANSWERED = 3


class ArtifactStoreStopped(Exception):
    """The artifact store stopped an attempt: the job goes back to the queue, to start again
    ``countdown`` seconds later."""

    def __init__(self, countdown: float):
        super().__init__(f"the artifact store did not answer; again in {countdown:g} s")
        self.countdown = countdown


_stores: dict[tuple[str, str], JobStore] = {}


def _store(settings: Settings) -> JobStore:
    key = (settings.redis_url, settings.key_prefix)
    if key not in _stores:
        _stores[key] = JobStore.from_url(*key, socket_timeout_s=settings.worker_redis_timeout_s)
    return _stores[key]


class Reporter:
    """Appends a job's progress and log events, throttled, and tells when to stop."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        attempt: int,
        interval_s: float,
        time_limit_s: float = 0.0,
        whose_limit: str = "its time limit",
    ):
        self.store, self.job_id, self.attempt, self.interval_s = store, job_id, attempt, interval_s
        self.deadline = time.monotonic() + time_limit_s if time_limit_s > 0 else None
        self.time_limit_s, self.whose_limit = time_limit_s, whose_limit
        self._last_sent = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False
        self._phases = telemetry.SpanChain("pruning_worker")  # one child span per phase, when tracing
        self._phase: tuple[str, float] | None = None
        self._seconds: dict[str, float] = {}
        self._measured: pb.PruneResult | None = None

    def _owned(self, job: pb.Job) -> None:
        """Raises StaleAttempt when this attempt no longer owns ``job`` (a newer attempt took it
        over, or it ended or went back to the queue)."""
        if job.attempt != self.attempt or job.state in TERMINAL or job.state == pb.JOB_STATE_QUEUED:
            raise StaleAttempt(f"job {job.id} attempt {self.attempt} is stale")

    def _fenced(self, change):
        def mutate(job: pb.Job):
            self._owned(job)
            return change(job)

        return mutate

    def confirm(self) -> None:
        """Raises StaleAttempt when this attempt no longer owns the job, as the store has it now."""
        self._owned(self.store.get(self.job_id))

    def progress(self, progress: pb.Progress, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_sent < self.interval_s:
            return
        self._last_sent = now

        def change(job: pb.Job):
            job.progress.CopyFrom(progress)
            return [make_event(job.id, progress=progress)]

        self.store.update(self.job_id, self._fenced(change))

    def timings(self) -> dict[str, float]:
        """Seconds spent in each phase so far (the current one up to now)."""
        out = dict(self._seconds)
        if self._phase is not None:
            name, started = self._phase
            out[name] = out.get(name, 0.0) + time.monotonic() - started
        return out

    def phase(self, phase: str, message: str) -> None:
        self.check_between_steps()
        self._seconds = self.timings()
        self._phase = (str(phase), time.monotonic())
        self._phases.start(f"phase {phase}", **{"pruning.phase": str(phase), "pruning.job_id": self.job_id})
        self.log(message)
        self.progress(pb.Progress(phase=phase), force=True)

    def log(self, message: str, level: str = "INFO") -> None:
        log.info("job %s: %s", self.job_id, message)
        self.store.update(
            self.job_id, self._fenced(lambda job: [make_event(job.id, log=pb.LogLine(level=level, message=message))])
        )

    def check_between_steps(self) -> None:
        """Raises JobDeadlineExceeded past the job's time limit, Cancelled once a cancel was
        asked, and WorkerStopping once the worker's shutdown stops the job (at each phase,
        export and part of the report, not only while training)."""
        self._check_deadline()
        if self._cancelled or self.store.cancel_requested(self.job_id):
            self._cancelled = True
            raise Cancelled()
        if shutdown.due():
            raise WorkerStopping()

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            limit = f"{self.time_limit_s:.0f}" if self.time_limit_s >= 10 else f"{self.time_limit_s:g}"
            raise JobDeadlineExceeded(f"the job ran past its time limit of {limit} s ({self.whose_limit})")

    def should_stop(self) -> bool:
        """True once a cancel was asked (checked at most every interval) or the worker's
        shutdown stops the job (:meth:`check_between_steps` then says which); raises
        JobDeadlineExceeded past the job's time limit."""
        self._check_deadline()
        now = time.monotonic()
        if not self._cancelled and now - self._last_cancel_check >= min(self.interval_s, 0.5):
            self._last_cancel_check = now
            self._cancelled = self.store.cancel_requested(self.job_id)
        return self._cancelled or shutdown.due()

    def measured(self, result: pb.PruneResult) -> None:
        """The result the pipeline fills as it goes: a job that fails or is cancelled keeps
        what it holds then (the baseline's figures and size, the device, the epochs run, the
        seconds per phase), without artifacts."""
        self._measured = result

    def _kept_result(self) -> pb.PruneResult | None:
        if self._measured is None:
            return None
        kept = pb.PruneResult()
        kept.CopyFrom(self._measured)
        del kept.artifacts[:]  # a job that stopped keeps none (those of one cancelled as it ended are taken back)
        kept.phase_seconds.update(self.timings())
        return kept

    def close(self, error: BaseException | None = None) -> None:
        """Ends the current phase's span."""
        self._phases.end(error)

    def finish(
        self, to: pb.JobState.ValueType, error: pb.JobError | None = None, result: pb.PruneResult | None = None
    ) -> pb.Job:
        self.close()

        def change(job: pb.Job):
            events = []
            target = to
            if job.state == pb.JOB_STATE_CANCELLING and to == pb.JOB_STATE_SUCCEEDED:
                target = pb.JOB_STATE_CANCELLED
            if result is not None and target == pb.JOB_STATE_SUCCEEDED:
                job.result.CopyFrom(result)
                events.append(make_event(job.id, result=result))
            elif target in (pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED) and (kept := self._kept_result()) is not None:
                job.result.CopyFrom(kept)
            err = error
            if target == pb.JOB_STATE_CANCELLED and err is None:
                err = pb.JobError(code=code_pb2.CANCELLED, message="cancelled while running")
            events.append(state_event(job, target, err))
            return events

        return self.store.update(self.job_id, self._fenced(change))


_INPUT_ERROR_CHARS = 500  # input errors name the cause, as tferrors.root_cause cuts it
# after a word, a '.' ends a sentence: TFLite's converter runs "...FlatBuffer./srv/.venv/bin/celery:10:1"
_PATH = re.compile(r"(?<![\w-])(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;()\[\]]+){2,}")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]+")  # an S3 endpoint's, say: the deployment's, not the tenant's


def _url_tail(match: re.Match[str]) -> str:
    """A URL as ``<url>/<its last path part>`` (``<url>`` alone without a path)."""
    path = match.group(0).split("://", 1)[1].split("?")[0].rstrip("/").split("/")[1:]
    return "<url>/" + path[-1] if path else "<url>"


def clean_line(text: str, limit: int) -> str:
    """The first line of ``text`` (with the next where it ends in a colon) with file paths cut to their last part
    and URLs' hosts hidden, at most ``limit`` characters: job errors never show server paths, endpoints or traces."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "... Example error message for object <Dense>:" + the cause
        lines[0] += " " + lines[1]
    first = _URL.sub(_url_tail, lines[0] if lines else "")
    first = _PATH.sub(lambda m: "<path>/" + re.split(r"[\\/]", m.group(0))[-1], first)
    return first if len(first) <= limit else first[: max(0, limit - 3)] + "..."


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def failure(exc: BaseException, limit: int = 200) -> pb.JobError:
    """The error of a job that failed on ``exc``: RESOURCE_EXHAUSTED when a disk the worker
    writes to is full (the operator's to fix, not the job's input), INTERNAL otherwise."""
    seen: BaseException | None = exc
    while seen is not None:  # the OSError itself, or TensorFlow's and h5py's errors wrapping ENOSPC
        if (isinstance(seen, OSError) and seen.errno in _DISK_FULL) or "No space left on device" in str(seen):
            name = getattr(seen, "filename", None)
            where = f" ({pathlib.Path(os.fsdecode(name)).parent})" if isinstance(name, (str, bytes)) and name else ""
            message = clean_line(f"a disk the worker writes to is full{where}: No space left on device", limit)
            return pb.JobError(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
        seen = seen.__cause__ or seen.__context__
    return pb.JobError(code=code_pb2.INTERNAL, message=cause_line(exc, limit))


def cause_line(exc: BaseException, limit: int = 200) -> str:
    """One clean line for a failed job's error: the exception's class and the first line of
    its message (see :func:`clean_line`). The traceback goes to the worker's log only."""
    first = clean_line(str(exc), limit)
    return clean_line(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, limit)


def _claim(store: JobStore, job_id: str, worker: str, task_id: str = "", alive_s: float = 0.0) -> pb.Job | None:
    """Starts a new attempt; None when there is nothing to run: the job ended, or an attempt
    that showed itself alive (a heartbeat or an event) less than ``alive_s`` ago still runs it
    (a second delivery of the task, such as the broker's after its visibility timeout, never
    takes over a live attempt; the reaper puts a job whose attempt went silent back in the
    queue). Decided on the record as it is when written."""
    cancel_asked = store.cancel_requested(job_id)
    claimed = False

    def alive(job: pb.Job) -> bool:
        if job.state not in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING):
            return False
        beat = store.last_heartbeat(job_id)
        return last_event_age_s(job) < alive_s or (beat is not None and time.time() - beat < alive_s)

    def claim(job: pb.Job):
        nonlocal claimed
        claimed = False  # a write that lost a race runs this again on the newer record
        if job.state in TERMINAL or alive(job):
            return []
        if job.state == pb.JOB_STATE_CANCELLING or cancel_asked:
            return [state_event(job, pb.JOB_STATE_CANCELLED, pb.JobError(code=code_pb2.CANCELLED, message="cancelled"))]
        events = []
        if job.state == pb.JOB_STATE_RUNNING:
            message = (
                f"attempt {job.attempt} did not finish (its worker was lost, or the job store stopped answering it); "
                "running again"
            )
            events.append(make_event(job.id, log=pb.LogLine(level="WARNING", message=message)))
        job.attempt += 1
        job.worker = worker
        job.ClearField("error")
        job.ClearField("progress")  # the lost attempt's, until this one reports its own
        events.append(state_event(job, pb.JOB_STATE_RUNNING))
        where = f"attempt {job.attempt} on {worker}" + (f", running as Celery task {task_id}" if task_id else "")
        events.append(make_event(job.id, log=pb.LogLine(level="INFO", message=where)))
        claimed = True
        return events

    job = store.update(job_id, claim)
    if job.state in TERMINAL:
        store.done_running(job_id)
    if not claimed and job.state == pb.JOB_STATE_RUNNING:
        log.warning("job %s: attempt %d is alive; this delivery is a duplicate", job_id, job.attempt)
    return job if claimed and job.state == pb.JOB_STATE_RUNNING else None


def _release(
    store: JobStore,
    job: pb.Job,
    settings: Settings,
    wait_s: float = 3600.0,
    *,
    which: str = "job store",
    why: str = "",
    countdown: float = 0.0,
) -> bool:
    """Puts a job whose attempt stopped because the job store did not answer back in the queue
    as soon as the store answers again (for up to ``wait_s``; the worker can take no other job
    while its broker, the same Redis, is away): the job resumes from its last checkpoint, and
    the stop is not counted as a lost worker (the reaper waits after an outage). False when the
    store stayed away. ``which``: the store that did not answer; ``why``: another reason the
    attempt stopped, in its place; ``countdown``: seconds before the next attempt may start."""
    from .app import app

    def back(record: pb.Job) -> list[pb.JobEvent]:
        if record.attempt != job.attempt or record.state not in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING):
            return []  # ended, re-queued or claimed again meanwhile
        message = f"attempt {job.attempt} stopped: {why or f'the {which} did not answer it'}; re-queued"
        if countdown:
            message += f" to start again in {countdown:g} s"
        return [
            make_event(record.id, log=pb.LogLine(level="WARNING", message=message)),
            state_event(record, pb.JOB_STATE_QUEUED),
        ]

    deadline, delay = time.monotonic() + wait_s, 0.5
    while True:
        try:
            after = store.update(job.id, back)
            if after.state == pb.JOB_STATE_QUEUED and after.attempt == job.attempt:
                app.send_task(task_names.PRUNE, args=[job.id], queue=settings.queue, countdown=countdown or None)
                if countdown:
                    store.expect_by(job.id, time.time() + countdown)
                else:
                    store.done_running(job.id)
                log.warning("job %s: attempt %d stopped (%s); re-queued", job.id, job.attempt, why or f"the {which}")
            return True
        except JobNotFound:  # the store answers again without the job: it lost its data
            log.warning("job %s: the job store no longer knows it (its data was lost); nothing to re-queue", job.id)
            with contextlib.suppress(Exception):
                open_store(settings).drop_checkpoints(job.id)
            return True
        except STORE_ERRORS:
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


def _store_outputs(
    settings: Settings, store: JobStore, job_id: str, tenant: str, outputs, attempt: int = 0
) -> list[pb.Artifact]:
    """Stores the job's exports and their records; a record the tenant did not hold before is
    staged as ``attempt``'s until the job succeeds (taken back otherwise, by whichever process
    sees the attempt end: itself, the next one, the reaper or a cancel)."""
    blobs = open_store(settings)  # exports go straight to the artifact store
    artifacts = []
    for path, fmt in outputs:
        artifact_id, size, crc = blobs.put_file(path)
        kind = pb.ARTIFACT_KIND_REPORT if fmt in formats.REPORT_FILES else pb.ARTIFACT_KIND_EXPORT
        record = ArtifactRecord(artifact_id, kind, fmt, pathlib.Path(path).name, size, time.time(), {}, job_id, crc)
        # content the tenant holds as a model or dataset keeps that record (jobs may name it):
        # the result lists the artifact as the tenant holds it
        if not store.put_artifact(tenant, record, staged_for=job_id, attempt=attempt, keep=UPLOAD_KINDS):
            with contextlib.suppress(KeyError):  # removed since: the record as written
                record = store.get_artifact(tenant, artifact_id)
        artifacts.append(record.to_proto())
    return artifacts


def _take_back(store: JobStore, job_id: str, tenant: str, attempt: int) -> None:
    """Takes back the export records an attempt that did not succeed staged (a failed or
    cancelled job lists none), each only as it wrote it; another attempt's stay (a stale
    attempt must not take back what the live one stored)."""
    try:
        store.take_back_exports(job_id, tenant, lambda staged_by: staged_by == attempt)
    except STORE_ERRORS:
        log.warning("job %s: could not remove the records of its exports; the retention will", job_id)


class Heartbeat:
    """Marks a running job alive every ``interval_s`` from a background thread, so that
    long phases without events (evaluation, export) do not look like a dead worker."""

    def __init__(self, store: JobStore, job_id: str, interval_s: float):
        self.store, self.job_id, self.interval_s = store, job_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.heartbeat(self.job_id)
            except STORE_ERRORS as exc:  # an outage: one line per beat, not a traceback
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
            except Exception:
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def job_dir(root: pathlib.Path, job_id: str) -> Iterator[pathlib.Path]:
    """A directory for one job's files, removed when the job ends. It holds a locked
    ``.lock`` file while it is in use, so a sweep after the worker was killed removes it and
    never the directory of a job still running."""
    root.mkdir(parents=True, exist_ok=True)
    path = pathlib.Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=root))
    fd = os.open(path / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    scratch, before = path / "tmp", tempfile.tempdir
    scratch.mkdir()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # TensorFlow's own scratch files (the TFLite converter's SavedModel, ...) go here too,
        # not to the system's temp directory, where a killed worker's would stay forever.
        tempfile.tempdir = str(scratch)
        yield path
    finally:
        tempfile.tempdir = before
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


STORE_PROBE_EVERY_S = 5.0
STORE_PROBE_TIMEOUT_S = 5.0  # a one-key listing; a probe of a store that never answers ends then


def wait_for_store(settings: Settings, most_s: float, every_s: float = STORE_PROBE_EVERY_S) -> bool:
    """Blocks until the artifact store answers a listing, for at most ``most_s`` (and no
    longer than the worker's shutdown allows: each probe gives up after
    ``STORE_PROBE_TIMEOUT_S``); whether it answered."""
    deadline = time.monotonic() + most_s
    blobs = open_probe(settings, STORE_PROBE_TIMEOUT_S)
    while True:
        try:
            blobs.probe()
            return True
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, it has not answered
            log.info("the artifact store still does not answer (%s); taking no job meanwhile", exc)
        left = deadline - time.monotonic()
        if left <= 0 or shutdown.requested():
            return False
        time.sleep(min(every_s, left))


def sweep_job_dirs(settings: Settings) -> int:
    """Removes the directories of jobs whose worker died (no process holds their lock)."""
    removed = sweep_unlocked(settings.work_path.glob("job-*"), settings.sweep_min_age_s)
    if removed:
        log.info("removed %d directories left by killed workers in %s", removed, settings.work_path)
    return removed


def run_job(job_id: str, settings: Settings, worker: str, task_id: str = "") -> pb.Job | None:
    """Runs job ``job_id`` to a terminal state; returns the final record (None if skipped)."""
    store = _store(settings)
    alive_s = max(settings.reap_after_s, 3 * settings.heartbeat_interval_s)
    # The claim first: from it the reaper watches the attempt. A worker lost between taking the
    # task and its claim leaves the job to the broker's redelivery, hours later; the sweep of a
    # dead job's files (seconds, after a crash) ran in that window.
    job = _claim(store, job_id, worker, task_id, alive_s)
    try:
        sweep_job_dirs(settings)
    except OSError:
        log.warning("could not sweep %s", settings.work_path, exc_info=True)
    if job is None:
        log.info("job %s: nothing to run", job_id)
        return None
    telemetry.bind(job_id=job_id, attempt=job.attempt)
    telemetry.annotate(**{"pruning.job_id": job_id, "pruning.attempt": job.attempt})
    log.info("job %s: attempt %d started", job_id, job.attempt)
    try:
        with Heartbeat(store, job_id, settings.heartbeat_interval_s):
            final = _run_claimed(store, job, settings)
    except WorkerStopping:
        why = "its worker is shutting down; it resumes from its last epoch checkpoint on the next worker"
        if _release(store, job, settings, wait_s=10.0, why=why):
            return None
        raise  # the store is away too: the reaper re-queues the job once its silence shows
    except ArtifactStoreStopped as stop:
        _release(store, job, settings, which="artifact store", countdown=stop.countdown)
        # The task sent with the countdown goes to the next worker that fetches, and this one,
        # idle, would be it: an outage of this host alone (its network to the store) kept the
        # job here while healthy workers sat idle. Busy waiting for its store, this worker
        # fetches nothing (one unacknowledged task at a time); another takes the job.
        wait_for_store(settings, stop.countdown)
        return None  # or, the job store away too, the reaper re-queues it once its silence shows
    except STORE_ERRORS:
        if _release(store, job, settings):
            return None
        raise  # the store is still away: the reaper re-queues the job once its silence shows
    except StaleAttempt:  # a newer attempt took the job over as this one ended: it is that one's
        log.warning("job %s: attempt %d was taken over", job_id, job.attempt)
        return None
    except Exception as exc:  # noqa: BLE001 - a failure before the job's own handling (setting it up)
        # Left RUNNING, the job would look like a lost worker to the reaper: re-queued after its
        # silence, max_attempts times, minutes later. It fails now, as INTERNAL.
        log.error("job %s failed before it started:\n%s", job_id, traceback.format_exc())
        try:
            final = Reporter(store, job_id, job.attempt, settings.event_interval_s).finish(
                pb.JOB_STATE_FAILED, failure(exc, settings.max_error_bytes)
            )
        except (StaleAttempt, *STORE_ERRORS):  # taken over, or the store away: the reaper's then
            log.warning("job %s: could not record its failure", job_id, exc_info=True)
            return None
    if final is not None:
        store.done_running(job_id)
        with contextlib.suppress(*STORE_ERRORS):
            store.forget_artifact_store_stops(job_id)  # else kept a week
        try:
            open_store(settings).drop_checkpoints(job_id)  # ended: nothing to resume
        except Exception:
            log.warning("job %s: could not delete its checkpoints", job_id, exc_info=True)
        _record_outcome(store, settings, final)
    return final


def _record_outcome(store: JobStore, settings: Settings, job: pb.Job) -> None:
    """Counts the finished job in the metrics every server reads (never fails the task)."""
    state = telemetry.state_label(job.state)
    telemetry.annotate(**{"pruning.state": state})
    log.info("job %s: %s after %.1f s", job.id, state, telemetry.job_seconds(job))
    try:
        telemetry.JobMetrics(store.redis, settings.key_prefix).record_job(job)
    except Exception:
        log.warning("job %s: could not record its metrics", job.id, exc_info=True)


def _run_claimed(store: JobStore, job: pb.Job, settings: Settings) -> pb.Job | None:
    job_id = job.id
    limit, whose = validation.time_limit(job.spec, settings.job_time_limit_s)
    reporter = Reporter(store, job_id, job.attempt, settings.event_interval_s, limit, whose)
    tenant = store.tenant_of(job_id)
    try:
        from . import pipeline, train

        # exports an earlier attempt stored as it was lost
        store.take_back_exports(job_id, tenant, lambda staged_by: staged_by < job.attempt)

        blobs = open_store(settings)
        if store.artifact_store_stopped(job_id):
            blobs.probe()  # still down: this attempt stops now, before it fetches or trains anything
            # It answers: that outage is over. A later stop (a blip at the export of a long job)
            # is a new outage, given the whole patience, not what is left of the first one's.
            store.artifact_store_answered(job_id)
        try:
            with (
                job_dir(settings.work_path, job_id) as workdir,
                train.checkpointing(
                    train.Checkpoints(
                        blobs,
                        job_id,
                        blobs.checkpoint_dir(job_id, workdir),
                        reporter.log,
                        reporter.confirm,
                        lambda: open_probe(settings, STORE_PROBE_TIMEOUT_S).probe(),
                        job.attempt,
                    )
                ),
            ):
                inputs = pipeline.Inputs.resolve(job.spec, tenant, store, settings)
                try:
                    result, outputs = pipeline.run(job.spec, inputs, reporter, workdir)
                finally:
                    inputs.release()
                reporter.check_between_steps()  # a job cancelled during its exports stores none of them
                result.artifacts.extend(_store_outputs(settings, store, job_id, tenant, outputs, job.attempt))
                if settings.mlflow_tracking_uri:
                    from . import mlflow_hook

                    mlflow_hook.log_job(settings, job, result, outputs[0][0], reporter)
            final = reporter.finish(pb.JOB_STATE_SUCCEEDED, result=result)
        except BaseException:
            _take_back(store, job_id, tenant, job.attempt)
            raise
        if final.state == pb.JOB_STATE_SUCCEEDED:
            store.keep_exports(job_id, tenant, job.attempt)
        else:  # cancelled as it ended
            _take_back(store, job_id, tenant, job.attempt)
        return final
    except StaleAttempt as exc:
        reporter.close(exc)
        log.warning("%s; stopping", exc)
    except Cancelled:
        return reporter.finish(pb.JOB_STATE_CANCELLED)
    except WorkerStopping as exc:
        reporter.close(exc)
        log.warning("job %s: attempt %d stops, its worker is shutting down", job_id, job.attempt)
        raise
    except JobDeadlineExceeded as exc:
        reporter.close(exc)
        return reporter.finish(pb.JOB_STATE_FAILED, pb.JobError(code=code_pb2.DEADLINE_EXCEEDED, message=str(exc)))
    except STORE_ERRORS as exc:
        # The job store did not answer (an outage, a hang past the socket timeout): no outcome
        # can be recorded, and none is earned. run_job puts the job back in the queue once the
        # store answers (a new attempt, resuming from the last checkpoint).
        reporter.close(exc)
        log.warning("job %s: attempt %d stopped, the job store is unavailable: %s", job_id, job.attempt, exc)
        raise
    except JobInputError as exc:
        reporter.close(exc)
        message = clean_line(str(exc), max(settings.max_error_bytes, _INPUT_ERROR_CHARS))
        return reporter.finish(pb.JOB_STATE_FAILED, pb.JobError(code=exc.code, message=message))
    except unavailable_errors() as exc:
        # The artifact store did not answer (an outage, rotated credentials): a later attempt
        # may find it back, resuming from the last checkpoint; once it has stopped the job's
        # attempts for artifact_store_patience_s the job fails. run_job re-queues it once the
        # heartbeat has stopped.
        reporter.close(exc)
        stops, since = store.count_artifact_store_stop(job_id)
        if store.cancel_requested(job_id):
            return reporter.finish(pb.JOB_STATE_CANCELLED)
        waited = time.time() - since
        answered = store.artifact_store_answers_of(job_id)
        if waited < settings.artifact_store_patience_s and answered < ARTIFACT_STORE_MAX_ANSWERED:
            raise ArtifactStoreStopped(min(ARTIFACT_STORE_RETRY_S * 2 ** min(stops - 1, 10), 300.0)) from exc
        if answered >= ARTIFACT_STORE_MAX_ANSWERED:
            said = f"the artifact store answered and then stopped {answered} attempts, the last with: {exc}"
        else:
            said = f"the artifact store did not answer {stops} attempts over {waited:.0f} s, the last with: {exc}"
        message = clean_line(said, settings.max_error_bytes)
        return reporter.finish(pb.JOB_STATE_FAILED, pb.JobError(code=code_pb2.UNAVAILABLE, message=message))
    except Exception as exc:  # noqa: BLE001 - any other failure ends the job as INTERNAL
        reporter.close(exc)
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        return reporter.finish(pb.JOB_STATE_FAILED, failure(exc, settings.max_error_bytes))
    return None
