"""A worker killed in epoch 2 of 2: the next attempt resumes from the epoch-1 checkpoint
(pruning and optimizer steps included) and runs none of epoch 1's steps again."""

from __future__ import annotations

import signal

import pytest
from hostile import tiny  # noqa: F401 - fixture

from conftest import ServerThread, fine_tuning, settings_for, start_worker, stop_worker, training_job, wait_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, job_spec
from pruning_core.phases import Phase

pytestmark = pytest.mark.integration
EPOCHS = 2


def test_rerun_attempt_resumes_from_the_last_epoch_checkpoint(env, files, tmp_path):
    lossy = {**env, "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-resume", "PRUNING_HEARTBEAT_INTERVAL_S": "0.5"}
    settings = settings_for(lossy, reap_after_s=4)
    server = ServerThread(settings)
    first = start_worker(lossy, tmp_path / "first.log")
    second = None
    try:
        with Client(server.target) as client:
            job = training_job(client, files, epochs=EPOCHS)
            wait_for(lambda: fine_tuning(job, epoch=2), 180, "epoch 2", 0.05)
            progress = job.status().progress
            per_epoch = progress.total_steps // EPOCHS
            first.send_signal(signal.SIGKILL)  # in epoch 2: epoch 1's checkpoint is written
            first.wait()
            assert (settings.checkpoints_path / job.id).exists()
            second = start_worker(lossy, tmp_path / "second.log")
            result = job.result(timeout=300)
            final = job.status()
            events = list(client.watch_events(job.id))
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 2
        runs = [
            i
            for i, e in enumerate(events)
            if e.WhichOneof("kind") == "state_change" and e.state_change.to == pb.JOB_STATE_RUNNING
        ]
        assert len(runs) == 2
        second_steps = [
            e.progress.step
            for e in events[runs[1] :]
            if e.WhichOneof("kind") == "progress" and e.progress.phase == Phase.FINE_TUNE and e.progress.step
        ]
        assert second_steps and min(second_steps) > per_epoch  # epoch 1 was not run again
        assert max(second_steps) == EPOCHS * per_epoch
        assert [h.epoch for h in final.result.history] == list(range(1, EPOCHS + 1))  # restored + run
        assert result.pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
        assert not (settings.checkpoints_path / job.id).exists()  # the ended job's checkpoints went
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_worker(proc)
        server.stop()


def test_a_job_cancelled_while_queued_again_leaves_nothing(env, tiny, tmp_path):  # noqa: F811
    """Its worker was lost, the reaper re-queued it, and the user cancels it before a worker
    takes it: the error says an attempt ran, and the lost attempt's checkpoints and the export
    records it stored as it died go at once (no worker will run the job to clear them)."""
    import hashlib

    from hostile import hostile_server

    from pruning_core.store import ArtifactRecord, JobStore, state_event
    from pruning_worker.runner import _claim

    server = hostile_server(env, "requeued-cancel")
    settings = server.settings
    store = JobStore.from_url(settings.redis_url, settings.key_prefix)
    try:
        with Client(server.target, api_key="key-a") as client:
            spec = job_spec(client.upload_model(tiny["keras"]).id, dataset=client.upload_dataset(tiny["data"]).id)
            job = client.submit(spec)
            _claim(store, job.id, "lost-worker")
            checkpoints = settings.checkpoints_path / job.id
            checkpoints.mkdir(parents=True)
            (checkpoints / "latest.json").write_text("{}")
            left = b"an export stored as the worker died"
            record = ArtifactRecord(
                hashlib.sha256(left).hexdigest(), pb.ARTIFACT_KIND_EXPORT, "keras", "m.keras", len(left), 1.0, {}
            )
            store.put_artifact("tenant-a", record, staged_for=job.id)
            store.update(job.id, lambda j: [state_event(j, pb.JOB_STATE_QUEUED)])  # the reaper's re-queue

            cancelled = client.cancel_job(job.id)
            assert cancelled.state == pb.JOB_STATE_CANCELLED
            assert cancelled.error.message == "cancelled while queued again after attempt 1 was lost"
            assert not checkpoints.exists()
            with pytest.raises(KeyError):
                store.get_artifact("tenant-a", record.id)
    finally:
        server.stop()
