"""A job whose worker dies is run again as a new attempt and finishes."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import ServerThread, settings_for, start_worker, stop_worker
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, constant_sparsity, job_spec

pytestmark = pytest.mark.integration


def test_killed_worker_job_is_rerun_and_finishes(env, files, tmp_path):
    lossy = {**env, "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-loss", "PRUNING_HEARTBEAT_INTERVAL_S": "0.5"}
    server = ServerThread(settings_for(lossy, reap_after_s=4))
    first = start_worker(lossy, tmp_path / "first.log")
    second = None
    try:
        with Client(server.target) as client:
            model = client.upload_model(files["keras"])
            data = client.upload_dataset(files["big_data"])
            job = client.submit(
                job_spec(
                    model.id, dataset=data.id, epochs=3, batch_size=128, schedule=constant_sparsity(0.5, frequency=20)
                )
            )
            deadline = time.monotonic() + 120
            while job.status().progress.step == 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = start_worker(lossy, tmp_path / "second.log")
            result = job.result(timeout=300)
            final = job.status()
            events = list(client.watch_events(job.id))
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 2
        assert result.pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
        runs = [
            e.state_change.attempt
            for e in events
            if e.WhichOneof("kind") == "state_change" and e.state_change.to == pb.JOB_STATE_RUNNING
        ]
        assert runs == [1, 2]
        assert any("presumed lost" in e.log.message for e in events if e.WhichOneof("kind") == "log")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_worker(proc)
        server.stop()
