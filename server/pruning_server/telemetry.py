"""The server's observability: the /metrics endpoint with job and queue figures read from
Redis, and trace context handed to the workers in the Celery message headers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

import prometheus_client
import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from pruning_core import telemetry
from pruning_core.objectstore import open_probe
from pruning_core.settings import Settings

log = logging.getLogger(__name__)
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OSError)


class JobMetricsCollector(Collector):
    """Queue depth, queued and running jobs, job durations and failures, read from Redis at
    each scrape, so that every server replica reports the same figures."""

    def __init__(self, settings: Settings):
        self.queue = settings.queue
        self.client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.jobs = telemetry.JobMetrics(self.client, settings.key_prefix)
        # Asked at each scrape with a timeout well inside Prometheus's own (10 s by default)
        self.artifacts = open_probe(settings, 3.0)

    def collect(self) -> Iterator[Metric]:
        store_up = GaugeMetricFamily(
            "pruning_artifact_store_up",
            "1 when the artifact store answered this scrape (S3: a one-key listing within 3 s)",
        )
        try:
            answers = self.artifacts.answers()
        except Exception:
            log.warning("metrics: the artifact store probe failed", exc_info=True)
            answers = False
        store_up.add_metric([], 1 if answers else 0)
        yield store_up
        if answers:
            try:
                count = self.artifacts.set_aside()
            except Exception:
                log.warning("metrics: could not count the blobs set aside", exc_info=True)
            else:
                aside = GaugeMetricFamily(
                    "pruning_artifacts_set_aside",
                    "blobs found changed behind the service's back and moved to the artifact store's quarantine/ "
                    "(kept for an operator to look at and remove)",
                )
                aside.add_metric([], count)
                yield aside
        up = GaugeMetricFamily("pruning_redis_up", "1 when the job store answered this scrape")
        try:
            families = list(self._read())
        except _TRANSIENT as exc:
            log.warning("metrics: the job store is unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("pruning_queue_length", "Celery messages waiting in the job queue", labels=["queue"])
        depth.add_metric([self.queue], self.jobs.queue_length(self.queue))
        yield depth
        queued = GaugeMetricFamily("pruning_jobs_queued", "jobs in state QUEUED waiting in the queue", labels=["queue"])
        queued.add_metric([self.queue], self.jobs.queued_jobs(self.queue))
        yield queued
        running_jobs, retrying_jobs = self.jobs.running_and_retrying()
        running = GaugeMetricFamily("pruning_jobs_running", "jobs running (or being cancelled) on a worker")
        running.add_metric([], running_jobs)
        yield running
        retrying = GaugeMetricFamily(
            "pruning_jobs_retrying",
            "jobs re-queued after an artifact store outage stopped their attempt, waiting to start again",
        )
        retrying.add_metric([], retrying_jobs)
        yield retrying
        durations = HistogramMetricFamily(
            "pruning_job_duration_seconds", "time from start to end of finished jobs, by final state", labels=["state"]
        )
        for state, hist in sorted(self.jobs.durations().items()):
            buckets = [(_le(b), hist.buckets.get(b, 0)) for b in telemetry.JOB_SECONDS_BUCKETS]
            durations.add_metric([state], [*buckets, ("+Inf", hist.count)], hist.sum)
        yield durations
        failures = CounterMetricFamily("pruning_job_failures", "failed jobs by error code", labels=["code"])
        for code, count in sorted(self.jobs.failures().items()):
            failures.add_metric([code], count)
        yield failures

    def close(self) -> None:
        self.client.close()


def _le(bound: float) -> str:
    return prometheus_client.utils.floatToGoString(bound)


class _ProcessMetrics(Collector):
    """The process-wide registry (gRPC and process metrics) inside a server's own registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


class MetricsEndpoint:
    """``/metrics`` over HTTP: this process's metrics plus the job figures."""

    def __init__(self, settings: Settings):
        host, _, port = settings.metrics_listen.rpartition(":")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ProcessMetrics())
        self.jobs = JobMetricsCollector(settings)
        self.registry.register(self.jobs)
        self.http: WSGIServer
        self.http, _ = prometheus_client.start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)
        self.port: int = self.http.server_port
        log.info("metrics on %s:%d/metrics", host or "0.0.0.0", self.port)

    def shutdown(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.jobs.close()


# -- tracing -------------------------------------------------------------------------------


def _inject_trace_context(headers: dict | None = None, **_: object) -> None:
    """``before_task_publish``: the current span (CreateJob's, or none) rides in the message
    headers; the worker continues the trace from there."""
    if headers is None or not telemetry.tracing_enabled():
        return
    from opentelemetry import propagate

    propagate.inject(headers)


def setup_tracing(settings: Settings) -> None:
    from celery.signals import before_task_publish

    telemetry.setup_tracing("pruning-server", settings.trace_file)
    before_task_publish.connect(_inject_trace_context, weak=False, dispatch_uid="pruning-trace-context")
