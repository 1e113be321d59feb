"""A worker told to shut down (SIGTERM, as `pruning up`, Docker and Kubernetes stop it) stops
its running job after PRUNING_WORKER_DRAIN_S instead of finishing it: the job goes back to the
queue at once (not after the reaper's silence) and the next worker resumes it from its last
epoch checkpoint. A job that ends within the drain time finishes on the stopping worker."""

from __future__ import annotations

import pathlib
import re
import signal
import time

import pytest

from conftest import ServerThread, fine_tuning, settings_for, start_worker, stop_worker, training_job, wait_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client
from pruning_core.objectstore import checkpoint_record
from pruning_core.phases import Phase

pytestmark = pytest.mark.integration
EPOCHS = 3
RESUMED = re.compile(rf"resuming from the checkpoint of epoch (\d+)/{EPOCHS}")


def _deployment(env: dict, name: str, drain_s: float) -> tuple[dict, ServerThread]:
    own = {**env, "PRUNING_QUEUE": f"{env['PRUNING_QUEUE']}-{name}", "PRUNING_WORKER_DRAIN_S": str(drain_s)}
    # the reaper would re-queue a silent job only after 10 minutes: any re-queue here is the worker's own
    return own, ServerThread(settings_for(own, reap_after_s=600))


def _worker_lines(tmp_path: pathlib.Path) -> list[str]:
    """What both workers logged of checkpoints, epochs and stopping: why an attempt did not
    resume, when it did not (a failure once under a loaded CI, not seen since)."""
    words = ("checkpoint", "resum", "epoch", "stopp", "shutting", "Warning", "Error")
    return [
        f"{log.name}: {line[-300:]}"
        for log in (tmp_path / "first.log", tmp_path / "second.log")
        if log.exists()
        for line in log.read_text(errors="replace").splitlines()
        if any(word in line for word in words)
    ][-40:]


def test_a_stopping_worker_re_queues_its_job_at_once_and_the_next_resumes_it(env, files, tmp_path):
    own, server = _deployment(env, "shutdown", drain_s=0)
    first = start_worker(own, tmp_path / "first.log")
    second = None
    try:
        with Client(server.target) as client:
            job = training_job(client, files, epochs=EPOCHS)
            wait_for(lambda: fine_tuning(job, epoch=2), 180, "epoch 2", 0.05)
            # the progress may say epoch 2 before epoch 1's checkpoint is on disk (its callback
            # runs after the progress's): stopped before it, the next attempt starts over
            latest = settings_for(own).artifacts_path / "checkpoints" / job.id / checkpoint_record(1)
            wait_for(latest.exists, 60, "epoch 1's checkpoint", 0.05)
            per_epoch = job.status().progress.total_steps // EPOCHS
            asked = time.monotonic()
            first.send_signal(signal.SIGTERM)  # in epoch 2: epoch 1's checkpoint is written
            assert first.wait(60) == 0
            stopped_s = time.monotonic() - asked
            queued = job.status()
            assert queued.state == pb.JOB_STATE_QUEUED and queued.attempt == 1
            second = start_worker(own, tmp_path / "second.log")
            job.result(timeout=300)
            final = job.status()
            events = list(client.watch_events(job.id))
        assert stopped_s < 30, f"the worker took {stopped_s:.0f} s to stop"
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 2
        logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
        assert any("attempt 1 stopped: its worker is shutting down" in m for m in logs), logs
        assert not any("presumed lost" in m for m in logs)
        # stopped in epoch 2 or later (an epoch takes 0.3-3 s here): the checkpoint of the last
        # epoch it finished is where the next attempt goes on, and an epoch is left to run
        resumed = [int(m.group(1)) for m in map(RESUMED.search, logs) if m]
        assert resumed and 1 <= resumed[0] < EPOCHS, (logs, _worker_lines(tmp_path))
        runs = [
            i
            for i, e in enumerate(events)
            if e.WhichOneof("kind") == "state_change" and e.state_change.to == pb.JOB_STATE_RUNNING
        ]
        second_steps = [
            e.progress.step
            for e in events[runs[1] :]
            if e.WhichOneof("kind") == "progress" and e.progress.phase == Phase.FINE_TUNE and e.progress.step
        ]
        assert second_steps and min(second_steps) > resumed[0] * per_epoch  # its epochs were not run again
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_worker(proc)
        server.stop()


def test_a_job_that_ends_within_the_drain_time_finishes_on_the_stopping_worker(env, files, tmp_path):
    own, server = _deployment(env, "drain", drain_s=300)
    worker = start_worker(own, tmp_path / "worker.log")
    try:
        with Client(server.target) as client:
            job = training_job(client, files, epochs=1)
            wait_for(lambda: fine_tuning(job, epoch=1), 180, "fine-tuning", 0.05)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(240) == 0  # it ends once the job has
            final = job.status()
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 1
    finally:
        if worker.poll() is None:
            stop_worker(worker)
        server.stop()
