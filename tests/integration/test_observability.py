"""Observability through the real server, Redis and Celery worker process: the server's and
the worker's /metrics scraped over HTTP, one trace from CreateJob to the job's phases, JSON
logs with the job context, and Celery task events that follow the job's outcome."""

from __future__ import annotations

import json
import pathlib
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerThread, settings_for, start_worker, stop_worker
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, JobFailed, constant_sparsity, job_spec, polynomial_decay

pytestmark = pytest.mark.integration
TASK_ID = re.compile(r"running as Celery task (\S+)")


@dataclass
class Deployment:
    server: ServerThread
    worker: Any
    queue: str
    spans_file: pathlib.Path
    exporter: Any  # the server's in-memory span exporter
    events: list[dict] = field(default_factory=list)

    def server_metrics(self) -> dict[tuple[str, tuple], float]:
        return scrape(self.server.running.metrics_port)

    def worker_metrics(self) -> dict[tuple[str, tuple], float]:
        text = self.worker.log_path.read_text()
        port = int(re.search(r"worker metrics on [\d.]+:(\d+)/metrics", text).group(1))
        return scrape(port)

    def worker_spans(self) -> list[dict]:
        if not self.spans_file.exists():
            return []
        return [json.loads(line) for line in self.spans_file.read_text().splitlines()]

    def worker_log(self) -> list[dict]:
        lines = self.worker.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in metrics.items() if n == name and labels.items() <= dict(ls).items())


def wait_for(predicate, timeout=120.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def in_memory_exporter():
    """The test process's tracer provider (the in-process server's) with an in-memory exporter."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def receive_events(broker_url: str, sink: list[dict], stop: threading.Event, ready: threading.Event) -> None:
    """Celery task events, as Flower receives them, until ``stop``."""
    from celery import Celery

    app = Celery(broker=broker_url)
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": sink.append})
        consumer = receiver.consume(limit=None, timeout=None, wakeup=False)
        ready.set()
        while not stop.is_set():
            try:
                next(consumer)
            except StopIteration:
                return
            except TimeoutError:
                continue


@pytest.fixture(scope="module")
def deployment(env, tmp_path_factory) -> Iterator[Deployment]:
    pytest.importorskip("opentelemetry.sdk")
    tmp = tmp_path_factory.mktemp("observability")
    own = {
        **env,
        "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-obs",
        "PRUNING_KEY_PREFIX": env["PRUNING_KEY_PREFIX"] + "-obs",
    }
    exporter = in_memory_exporter()
    settings = settings_for(own, metrics_listen="127.0.0.1:0", tracing=True)
    server = ServerThread(settings)
    worker_env = {
        **own,
        "PRUNING_LOG_FORMAT": "json",
        "PRUNING_TRACING": "true",
        "PRUNING_TRACE_FILE": str(tmp / "worker-spans.jsonl"),
        "OTEL_TRACES_EXPORTER": "none",
        "PRUNING_WORKER_METRICS_LISTEN": "127.0.0.1:0",
    }
    events: list[dict] = []
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=receive_events, args=(settings.celery_broker_url(), events, stop, ready), daemon=True
    )
    thread.start()
    assert ready.wait(30)
    worker = start_worker(worker_env, tmp / "worker.log")
    try:
        yield Deployment(server, worker, own["PRUNING_QUEUE"], tmp / "worker-spans.jsonl", exporter, events)
    finally:
        stop.set()
        stop_worker(worker)
        server.stop()
        client = redis.Redis.from_url(env["PRUNING_REDIS_URL"])
        keys = list(client.scan_iter(f"{own['PRUNING_KEY_PREFIX']}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture()
def client(deployment):
    with Client(deployment.server.target, timeout=30) as c:
        yield c


def small_spec(client, files, **kwargs):
    model = client.upload_model(files["keras"])
    data = client.upload_dataset(files["data"])
    options = dict(schedule=constant_sparsity(0.5, frequency=5), epochs=1, batch_size=64, seed=3, report=False)
    options.update(kwargs)
    return job_spec(model.id, dataset=data.id, **options)


def long_spec(client, files):
    model = client.upload_model(files["keras"])
    data = client.upload_dataset(files["big_data"])
    return job_spec(
        model.id, dataset=data.id, schedule=polynomial_decay(0.2, 0.6, frequency=10), epochs=200, batch_size=16
    )


def start_long_job(client, files):
    job = client.submit(long_spec(client, files))
    wait_for(lambda: job.status().progress.phase == "fine_tune" and job.status().progress.step > 0)
    return job


def task_id_of(client, job_id: str) -> str:
    for event in client.watch_events(job_id):
        if event.WhichOneof("kind") == "log" and (match := TASK_ID.search(event.log.message)):
            return match.group(1)
    raise AssertionError(f"job {job_id} has no Celery task id event")


def test_metrics_follow_the_queue_and_the_jobs(deployment, client, files):
    queue = deployment.queue
    before = deployment.server_metrics()
    running = start_long_job(client, files)
    queued = client.submit(small_spec(client, files))

    during = wait_for(lambda: (m := deployment.server_metrics()) and value(m, "pruning_jobs_running") == 1 and m)
    assert value(during, "pruning_queue_length", queue=queue) == 1
    assert value(during, "pruning_jobs_queued", queue=queue) == 1
    assert value(during, "pruning_redis_up") == 1

    assert running.cancel().state == pb.JOB_STATE_CANCELLING
    assert running.wait(timeout=60).state == pb.JOB_STATE_CANCELLED
    queued.result(timeout=120)
    after = wait_for(lambda: (m := deployment.server_metrics()) and value(m, "pruning_jobs_running") == 0 and m)
    assert value(after, "pruning_queue_length", queue=queue) == 0
    assert value(after, "pruning_jobs_queued", queue=queue) == 0
    for state in ("succeeded", "cancelled"):
        count = "pruning_job_duration_seconds_count"
        assert value(after, count, state=state) == value(before, count, state=state) + 1
    succeeded_s = value(after, "pruning_job_duration_seconds_sum", state="succeeded")
    assert 0 < succeeded_s - value(before, "pruning_job_duration_seconds_sum", state="succeeded") < 120
    assert value(after, "pruning_job_duration_seconds_bucket", state="succeeded", le="+Inf") == value(
        after, "pruning_job_duration_seconds_count", state="succeeded"
    )

    # gRPC server metrics under the go-grpc-prometheus names.
    service = "pruning.v1.PruningService"
    assert value(after, "grpc_server_started_total", grpc_service=service, grpc_method="CreateJob") >= 2
    assert value(after, "grpc_server_handled_total", grpc_method="CreateJob", grpc_code="OK", grpc_type="unary") >= 2
    # Each upload sends its header; the first of a content its bytes too (again, it is held:
    # answered after the header, so the count depends on what ran before in this deployment)
    uploads = value(after, "grpc_server_started_total", grpc_method="UploadModel", grpc_type="client_stream")
    received = value(after, "grpc_server_msg_received_total", grpc_method="UploadModel", grpc_type="client_stream")
    assert uploads >= 2 and received > uploads
    assert value(after, "grpc_server_msg_sent_total", grpc_method="WatchJob", grpc_type="server_stream") >= 3
    assert value(after, "grpc_server_handling_seconds_count", grpc_method="GetJob") >= 1

    worker = deployment.worker_metrics()
    assert value(worker, "pruning_worker_job_duration_seconds_count", state="succeeded") >= 1
    assert value(worker, "pruning_worker_job_duration_seconds_count", state="cancelled") >= 1


def test_one_trace_from_create_job_to_the_phases(deployment, client, files):
    job = client.submit(small_spec(client, files))
    job.result(timeout=120)
    task_id = task_id_of(client, job.id)

    (create,) = [
        s
        for s in deployment.exporter.get_finished_spans()
        if s.name.endswith("/CreateJob") and s.attributes.get("pruning.job_id") == job.id
    ]
    task = wait_for(
        lambda: next((s for s in deployment.worker_spans() if s["attributes"].get("celery.task_id") == task_id), None),
        timeout=30,
    )
    trace_id, create_span_id = format(create.context.trace_id, "032x"), format(create.context.span_id, "016x")
    assert task["trace_id"] == trace_id and task["parent_span_id"] == create_span_id
    assert task["kind"] == "CONSUMER" and task["service"] == "pruning-worker"
    assert task["attributes"]["pruning.job_id"] == job.id and task["attributes"]["pruning.attempt"] == 1
    assert task["attributes"]["pruning.state"] == "succeeded"

    phases = sorted(
        (s for s in deployment.worker_spans() if s["parent_span_id"] == task["span_id"]), key=lambda s: s["start_ns"]
    )
    assert [s["name"] for s in phases] == [
        "phase load",
        "phase baseline",
        "phase fine_tune",
        "phase evaluate",
        "phase export",
    ]
    assert all(s["trace_id"] == trace_id and s["end_ns"] <= task["end_ns"] for s in phases)

    # The worker's JSON logs of this job carry its id, attempt, task id and trace.
    records = [r for r in deployment.worker_log() if r.get("job_id") == job.id]
    assert records and all(r["task_id"] == task_id for r in records)
    assert any(r.get("attempt") == 1 and r.get("trace_id") == trace_id for r in records)


def test_celery_task_state_follows_the_job(deployment, client, files, tmp_path):
    cancelled = start_long_job(client, files)
    assert cancelled.cancel().state == pb.JOB_STATE_CANCELLING
    assert cancelled.wait(timeout=60).state == pb.JOB_STATE_CANCELLED

    # A NaN sample: only the worker reads the values (INVALID_ARGUMENT).
    with np.load(files["data"]) as f:
        arrays = dict(f)
    arrays["x_train"] = arrays["x_train"].astype("float32")
    arrays["x_train"][7].flat[0] = np.nan
    np.savez(tmp_path / "nan_sample.npz", **arrays)
    spec = small_spec(client, files)
    spec.dataset.artifact_id = client.upload_dataset(tmp_path / "nan_sample.npz").id
    failed = client.submit(spec)
    with pytest.raises(JobFailed):
        failed.result(timeout=120)

    failed_task, cancelled_task = task_id_of(client, failed.id), task_id_of(client, cancelled.id)

    def outcome(task_id: str) -> dict | None:
        return next(
            (
                e
                for e in deployment.events
                if e.get("uuid") == task_id and e["type"] in ("task-failed", "task-succeeded")
            ),
            None,
        )

    event = wait_for(lambda: outcome(failed_task), timeout=30)
    assert event["type"] == "task-failed" and "JobFailedError" in event["exception"]
    assert "INVALID_ARGUMENT" in event["exception"] and failed.id in event["exception"]
    assert wait_for(lambda: outcome(cancelled_task), timeout=30)["type"] == "task-succeeded"
    # Sent by the server, failed once, never retried or redelivered.
    types = [e["type"] for e in deployment.events if e.get("uuid") == failed_task]
    assert types.count("task-sent") == types.count("task-started") == 1 and "task-retried" not in types
    assert failed.status().attempt == 1

    server = deployment.server_metrics()
    assert value(server, "pruning_job_failures_total", code="INVALID_ARGUMENT") >= 1
    worker = deployment.worker_metrics()
    assert value(worker, "pruning_worker_job_failures_total", code="INVALID_ARGUMENT") >= 1


def test_task_outcome_mapping():
    from pruning_worker.tasks import JobFailedError, check_outcome

    check_outcome(None)
    check_outcome(pb.Job(id="j", state=pb.JOB_STATE_SUCCEEDED))
    check_outcome(pb.Job(id="j", state=pb.JOB_STATE_CANCELLED, error=pb.JobError(code=1, message="cancelled")))
    with pytest.raises(JobFailedError, match=r"job j failed \(INVALID_ARGUMENT\): bad labels"):
        check_outcome(pb.Job(id="j", state=pb.JOB_STATE_FAILED, error=pb.JobError(code=3, message="bad labels")))
