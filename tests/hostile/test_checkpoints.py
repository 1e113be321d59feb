"""A worker killed in epoch 2 of 3: the next attempt resumes from the epoch-1 checkpoint
(pruning and optimizer steps included) and runs none of epoch 1's steps again."""

from __future__ import annotations

import signal

import pytest

from conftest import ServerThread, fine_tuning, settings_for, start_worker, stop_worker, training_job, wait_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client
from pruning_core.phases import Phase

pytestmark = pytest.mark.integration
EPOCHS = 3


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
