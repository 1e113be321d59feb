"""The worker's observability, wired to Celery's signals.

- Logs: the worker owns its logging setup (text or JSON, ``PRUNING_LOG_FORMAT``); each task's
  records carry its job id, Celery task id and (once claimed) attempt.
- Metrics: with ``PRUNING_WORKER_METRICS_LISTEN`` set, the worker serves its own ``/metrics``
  (job durations by final state, failures by code; needs ``pruning-worker[metrics]``).
- Tracing: with ``PRUNING_TRACING`` set, each task runs under a CONSUMER span that continues
  the trace the server put in the message headers (needs ``pruning-worker[otel]``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun, worker_init, worker_ready

from pruning.v1 import pruning_pb2 as pb
from pruning_core import telemetry
from pruning_core.settings import Settings

log = logging.getLogger(__name__)
_TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
_spans: dict[str, tuple[Any, object]] = {}  # task id -> (span, context token)
_metrics: dict[str, Any] = {}


# -- metrics -------------------------------------------------------------------------------


def start_metrics_server(listen: str) -> int | None:
    """Serves this process's metrics on ``host:port``; returns the bound port."""
    try:
        import prometheus_client
    except ImportError:
        log.warning(
            "PRUNING_WORKER_METRICS_LISTEN is set but prometheus-client is not installed "
            "(pip install pruning-worker[metrics])"
        )
        return None
    if not _metrics:
        _metrics["duration"] = prometheus_client.Histogram(
            "pruning_worker_job_duration_seconds",
            "time from start to end of the jobs this worker finished",
            ["state"],
            buckets=telemetry.JOB_SECONDS_BUCKETS,
        )
        _metrics["failures"] = prometheus_client.Counter(
            "pruning_worker_job_failures_total", "jobs this worker failed, by error code", ["code"]
        )
    host, _, port = listen.rpartition(":")
    server, _ = prometheus_client.start_http_server(int(port), addr=host or "0.0.0.0")
    log.info("worker metrics on %s:%d/metrics", host or "0.0.0.0", server.server_port)
    return int(server.server_port)


def job_finished(job: pb.Job | None) -> None:
    """Counts a job this worker brought to a terminal state."""
    if job is None or not _metrics:
        return
    _metrics["duration"].labels(telemetry.state_label(job.state)).observe(telemetry.job_seconds(job))
    if job.state == pb.JOB_STATE_FAILED:
        _metrics["failures"].labels(telemetry.code_label(job.error.code)).inc()


# -- tracing -------------------------------------------------------------------------------


def _carrier(request: Any) -> dict[str, str]:
    """The trace headers of a task's message (top-level on the request, or under ``headers``)."""
    nested = getattr(request, "headers", None) or {}
    carrier = {}
    for key in _TRACE_HEADERS:
        value = getattr(request, key, None) or nested.get(key)
        if isinstance(value, str):
            carrier[key] = value
    return carrier


def _start_task_span(task_id: str, task: Any, job_id: str | None) -> None:
    tracer = telemetry.tracer("pruning_worker")
    if tracer is None:
        return
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(_carrier(task.request))
    attributes = {"messaging.system": "celery", "celery.task_id": task_id, "celery.task_name": task.name}
    if job_id:
        attributes["pruning.job_id"] = job_id
    span = tracer.start_span(f"run {task.name}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes)
    _spans[task_id] = (span, context.attach(trace.set_span_in_context(span, parent)))


def _end_task_span(task_id: str, state: str | None) -> None:
    entry = _spans.pop(task_id, None)
    if entry is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    span, token = entry
    span.set_attribute("celery.state", state or "")
    if state == "FAILURE":
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    context.detach(token)  # type: ignore[arg-type]


# -- signals -------------------------------------------------------------------------------


def log_level(settings: Settings, celery_level: int | str | None) -> int | str:
    """The workers' log level: ``PRUNING_LOG_LEVEL`` where it is set, else Celery's
    ``--loglevel`` (which Celery always passes, WARNING by default)."""
    if "log_level" in settings.model_fields_set or not celery_level:
        return settings.log_level
    return celery_level


def install(app: Celery, settings: Settings) -> None:
    """Connects the handlers to ``app``'s worker signals."""

    def on_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
        # Connected, this receiver replaces Celery's own logging setup.
        telemetry.configure_logging(settings.log_format, log_level(settings, loglevel))

    def on_worker_init(**_: Any) -> None:
        if settings.tracing:
            telemetry.setup_tracing("pruning-worker", settings.trace_file)

    def on_worker_ready(**_: Any) -> None:  # logging is set up by now, and no task has run yet
        if settings.worker_metrics_listen:
            start_metrics_server(settings.worker_metrics_listen)

    def on_prerun(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
        job_id = str(args[0]) if args else None
        telemetry.clear()
        telemetry.bind(job_id=job_id, task_id=task_id)
        if task_id and task is not None:
            _start_task_span(task_id, task, job_id)

    def on_postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        if task_id:
            _end_task_span(task_id, state)
        telemetry.clear()

    setup_logging.connect(on_setup_logging, weak=False, dispatch_uid="pruning-setup-logging")
    worker_init.connect(on_worker_init, weak=False, dispatch_uid="pruning-worker-init")
    worker_ready.connect(on_worker_ready, weak=False, dispatch_uid="pruning-worker-metrics")
    task_prerun.connect(on_prerun, weak=False, dispatch_uid="pruning-task-prerun")
    task_postrun.connect(on_postrun, weak=False, dispatch_uid="pruning-task-postrun")
