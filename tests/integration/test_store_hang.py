"""A job store that hangs mid-job (Redis stopped, not down) never fails the job: the attempt
stops when its Redis calls time out and puts the job back in the queue once the store answers
again, and it finishes as a new attempt resuming from its checkpoint. A second delivery of a task never
takes over an attempt that is alive."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest
import redis
from redis_servers import free_ports

from conftest import ServerThread, fine_tuning, settings_for, start_worker, stop_worker, training_job, wait_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client

pytestmark = pytest.mark.integration


@pytest.fixture()
def own_redis(tmp_path):
    """A Redis of this test's own, so that it can be stopped (SIGSTOP) without touching others."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary")
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield proc, f"redis://127.0.0.1:{port}/0"
    proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait()
    client.close()


def test_a_hung_job_store_stops_the_attempt_and_the_job_finishes(env, files, tmp_path, own_redis):
    proc, url = own_redis
    hung = {
        **env,
        "PRUNING_REDIS_URL": url,
        "PRUNING_WORKER_REDIS_TIMEOUT_S": "2",
        "PRUNING_HEARTBEAT_INTERVAL_S": "0.5",
        "PRUNING_REAP_AFTER_S": "600",  # the attempt puts the job back itself, not the reaper
    }
    server = ServerThread(settings_for(hung))
    worker = start_worker(hung, tmp_path / "worker.log")
    try:
        with Client(server.target, timeout=60) as client:
            job = training_job(client, files, epochs=3)
            wait_for(lambda: fine_tuning(job, epoch=2), 180, "epoch 2", 0.05)
            proc.send_signal(signal.SIGSTOP)  # Redis hangs: connections stay open, nothing answers
            time.sleep(8)  # well past the 2 s timeout, whatever the step time: the attempt stops
            proc.send_signal(signal.SIGCONT)
            result = job.result(timeout=300)
            final = job.status()
            events = list(client.watch_events(job.id))
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt >= 2
        assert result.pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
        states = [e.state_change.to for e in events if e.WhichOneof("kind") == "state_change"]
        assert pb.JOB_STATE_FAILED not in states
        log = (tmp_path / "worker.log").read_text()
        assert "the job store is unavailable" in log
        logs = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
        assert any("stopped: the job store did not answer it; re-queued" in m for m in logs)
        assert pb.JOB_STATE_QUEUED in states[1:]  # back in the queue, not counted as a lost worker
    finally:
        stop_worker(worker)
        server.stop()


def test_a_second_delivery_never_takes_over_a_live_attempt(env, files, tmp_path):
    """As the broker redelivers an unacknowledged task after its visibility timeout (12 h) while
    the first attempt still runs: the copy is refused, and the job ends on attempt 1."""
    from pruning_core import tasks
    from pruning_server.service import make_celery

    live = {**env, "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-dup", "PRUNING_HEARTBEAT_INTERVAL_S": "0.5"}
    server = ServerThread(settings_for(live))
    first, second = start_worker(live, tmp_path / "first.log"), start_worker(live, tmp_path / "second.log")
    celery = make_celery(settings_for(live))
    try:
        with Client(server.target, timeout=60) as client:
            job = training_job(client, files, epochs=1)
            wait_for(lambda: job.status().progress.step > 0, 180, "the job to train", 0.05)
            celery.send_task(tasks.PRUNE, args=[job.id], queue=live["PRUNING_QUEUE"])  # the duplicate
            final = job.wait(timeout=300)
        assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 1
        logs = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
        assert "this delivery is a duplicate" in logs
    finally:
        celery.close()
        stop_worker(first)
        stop_worker(second)
        server.stop()


def test_a_hung_job_store_is_unavailable_before_the_clients_deadline(env, own_redis):
    """The server's answer itself (no SDK retries): UNAVAILABLE, which clients retry, after the
    server's Redis timeout, not DEADLINE_EXCEEDED after the client's whole deadline."""
    import grpc

    from pruning.v1 import pruning_pb2_grpc as pb_grpc
    from pruning_core.store import SERVER_REDIS_TIMEOUT_S

    proc, url = own_redis
    server = ServerThread(settings_for({**env, "PRUNING_REDIS_URL": url}))
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.PruningServiceStub(channel)
            assert not stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs
            proc.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                stub.ListJobs(pb.ListJobsRequest(), timeout=30)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < SERVER_REDIS_TIMEOUT_S + 5 < 30
            proc.send_signal(signal.SIGCONT)
            assert not stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs
    finally:
        proc.send_signal(signal.SIGCONT)
        server.stop()
