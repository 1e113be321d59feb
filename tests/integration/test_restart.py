"""A server restart loses nothing: the SDK's watch reconnects and resumes, with no gap and
no duplicate, and the job goes on."""

from __future__ import annotations

import socket
import threading

import pytest

from conftest import ServerThread, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, constant_sparsity, job_spec

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_watch_survives_a_server_restart(env, worker, files):
    settings = settings_for(env, grace_s=0.5)
    port = free_port()
    first = ServerThread(settings, f"127.0.0.1:{port}")
    second = None
    try:
        with Client(f"127.0.0.1:{port}") as client:
            model = client.upload_model(files["keras"])
            data = client.upload_dataset(files["big_data"])
            job = client.submit(
                job_spec(
                    model.id,
                    dataset=data.id,
                    epochs=2,
                    batch_size=128,
                    schedule=constant_sparsity(0.5, frequency=20),
                    report=False,  # the report's tests run it
                )
            )
            seen = []
            restarted = threading.Event()
            for event in job.watch():
                seen.append(event)
                if event.WhichOneof("kind") == "progress" and event.progress.step > 0 and not restarted.is_set():
                    first.stop()
                    second = ServerThread(settings, f"127.0.0.1:{port}")
                    restarted.set()
            assert restarted.is_set()
            replay = list(client.watch_events(job.id))
        assert [e.id for e in seen] == [e.id for e in replay]
        assert seen[-1].state_change.to == pb.JOB_STATE_SUCCEEDED
    finally:
        for srv in (first, second):
            if srv is not None:
                srv.stop()
