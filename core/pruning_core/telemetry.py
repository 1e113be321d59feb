"""Logging, tracing and job-metric helpers shared by the server and the workers.

- Logs: :func:`configure_logging` installs one root handler, text or JSON (one object per
  line). Every record carries the fields bound with :func:`bind` in the current context (job
  id, attempt, Celery task id) and, while a span is active, its trace and span ids.
- Tracing: OpenTelemetry is optional (``pip install pruning-server[otel]`` / ``pruning-worker[otel]``)
  and imported only when :func:`setup_tracing` runs; :func:`tracer` is None until then.
- Job metrics: :class:`JobMetrics` keeps job outcome aggregates in Redis (written by workers,
  read by every server replica's ``/metrics``), beside the queue and running-job gauges.
"""

from __future__ import annotations

import base64
import contextvars
import datetime
import json
import logging
import os
import pathlib
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import redis
from google.rpc import code_pb2

from pruning.v1 import pruning_pb2 as pb

from .store import Keys

CONTEXT_FIELDS = ("job_id", "attempt", "task_id")
_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("pruning_log_context", default=None)


# -- log context ---------------------------------------------------------------------------


def bind(**fields: Any) -> None:
    """Adds ``fields`` (None values are skipped) to every later log record of this context."""
    current = dict(_context.get() or {})
    current.update({k: v for k, v in fields.items() if v is not None})
    _context.set(current)


def clear() -> None:
    """Forgets every bound field of this context."""
    _context.set(None)


def bound() -> dict[str, Any]:
    return dict(_context.get() or {})


def _span_ids() -> tuple[str, str] | None:
    if "opentelemetry.trace" not in sys.modules:  # tracing was never imported: nothing to look up
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class ContextFilter(logging.Filter):
    """Copies the bound fields (and the active trace and span ids) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        ids = _span_ids()
        if ids is not None and not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = ids
        return True


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message [job=... attempt=... task=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = [
            f"{name.removesuffix('_id')}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        if not tags:
            return text
        head, sep, tail = text.partition("\n")  # keep a traceback below the tagged line
        return f"{head} [{' '.join(tags)}]{sep}{tail}"


def configure_logging(fmt: str = "text", level: int | str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Installs the root handler (replacing the one a previous call installed)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler._pruning = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_pruning", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


# -- tracing -------------------------------------------------------------------------------

_tracing_on = False
_trace_files: set[pathlib.Path] = set()
_lock = threading.Lock()


def setup_tracing(service_name: str, trace_file: pathlib.Path | None = None) -> None:
    """Turns tracing on in this process (idempotent).

    An SDK ``TracerProvider`` already installed (by a test, or by the host application) is
    used as it is; otherwise one is installed with the exporters OTEL_TRACES_EXPORTER names
    (``otlp`` by default, ``console``, ``none``). ``trace_file`` adds a JSON-lines exporter.
    """
    global _tracing_on
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "tracing is on (PRUNING_TRACING) but the OpenTelemetry SDK is not installed: "
            "pip install 'pruning-server[otel]' / 'pruning-worker[otel]'"
        ) from exc

    with _lock:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
            provider = TracerProvider(resource=Resource.create(attributes))
            for exporter in _env_exporters():
                provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
        if trace_file is not None and trace_file.resolve() not in _trace_files:
            _trace_files.add(trace_file.resolve())
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))  # type: ignore[arg-type]
        _tracing_on = True


def _env_exporters() -> list[Any]:
    exporters: list[Any] = []
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip().lower()
        if name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError:
                logging.getLogger(__name__).warning(
                    "OTLP exporter not installed: pip install opentelemetry-exporter-otlp"
                )
                continue
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name not in ("none", ""):
            logging.getLogger(__name__).warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
    return exporters


def tracing_enabled() -> bool:
    return _tracing_on


def tracer(name: str) -> Any:
    """An OpenTelemetry tracer once :func:`setup_tracing` ran, else None."""
    if not _tracing_on:
        return None
    from opentelemetry import trace

    return trace.get_tracer(name)


class JsonLinesSpanExporter:
    """Appends each finished span to a file as one JSON object (for debugging and tests)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = [json.dumps(_span_dict(span), default=str) + "\n" for span in spans]
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _span_dict(span: Any) -> dict[str, Any]:
    ctx, parent = span.context, span.parent
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "service": span.resource.attributes.get("service.name"),
    }


class SpanChain:
    """Consecutive child spans of the current span (a job's phases): starting one ends the
    previous. Does nothing while tracing is off."""

    def __init__(self, name: str):
        self._tracer = tracer(name)
        self._span: Any = None

    def start(self, name: str, **attributes: Any) -> None:
        self.end()
        if self._tracer is not None:
            self._span = self._tracer.start_span(name, attributes=attributes)

    def end(self, error: BaseException | None = None) -> None:
        if self._span is None:
            return
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.record_exception(error)
            self._span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self._span.end()
        self._span = None


def annotate(**attributes: Any) -> None:
    """Sets attributes on the current span, if tracing is on."""
    if not _tracing_on:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes({k: v for k, v in attributes.items() if v is not None})


# -- job metrics in Redis ------------------------------------------------------------------

JOB_SECONDS_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)
_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport keeps priorities 3, 6, 9 in lists "<queue>\x06\x16<n>"


def state_label(state: int) -> str:
    """``JOB_STATE_FAILED`` -> ``failed``."""
    return pb.JobState.Name(pb.JobState.ValueType(state)).removeprefix("JOB_STATE_").lower()


def code_label(code: int) -> str:
    """A ``google.rpc.Code`` number's name (``INVALID_ARGUMENT``)."""
    return code_pb2.Code.Name(code) if code in code_pb2.Code.values() else str(code)


def job_seconds(job: pb.Job) -> float:
    """Time from the job's start (its first attempt) to its end."""
    if not job.HasField("started_at") or not job.HasField("finished_at"):
        return 0.0
    return max(0.0, (job.finished_at.ToNanoseconds() - job.started_at.ToNanoseconds()) / 1e9)


@dataclass
class DurationHistogram:
    buckets: dict[float, int] = field(default_factory=dict)  # cumulative, by upper bound
    count: int = 0
    sum: float = 0.0


class JobMetrics:
    """Job outcome aggregates under ``<prefix>:metrics:*`` and the queue's live figures.

    Workers call :meth:`record` once per finished job; every server replica reads the same
    numbers, so a scrape of any replica tells the deployment's story.
    """

    def __init__(self, client: redis.Redis, prefix: str):
        self.redis = client
        self.keys = Keys(prefix)
        self.durations_key = f"{prefix}:metrics:job_seconds"
        self.failures_key = f"{prefix}:metrics:job_failures"

    def record(self, state: str, seconds: float, failure_code: str | None = None) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for bound_ in JOB_SECONDS_BUCKETS:
            if seconds <= bound_:
                pipe.hincrby(self.durations_key, f"{state}|{bound_}", 1)
        pipe.hincrby(self.durations_key, f"{state}|count", 1)
        pipe.hincrbyfloat(self.durations_key, f"{state}|sum", seconds)
        if failure_code:
            pipe.hincrby(self.failures_key, failure_code, 1)
        pipe.execute()

    def record_job(self, job: pb.Job) -> None:
        """Counts a job that reached a terminal state."""
        failure = code_label(job.error.code) if job.state == pb.JOB_STATE_FAILED else None
        self.record(state_label(job.state), job_seconds(job), failure)

    def durations(self) -> dict[str, DurationHistogram]:
        out: dict[str, DurationHistogram] = {}
        for raw_key, raw_value in self.redis.hgetall(self.durations_key).items():
            state, _, what = _text(raw_key).rpartition("|")
            hist = out.setdefault(state, DurationHistogram())
            if what == "count":
                hist.count = int(raw_value)
            elif what == "sum":
                hist.sum = float(raw_value)
            else:
                hist.buckets[float(what)] = int(raw_value)
        return out

    def failures(self) -> dict[str, int]:
        return {_text(k): int(v) for k, v in self.redis.hgetall(self.failures_key).items()}

    def queue_length(self, queue: str) -> int:
        """Celery messages waiting in ``queue`` (all priority lists)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in _queue_lists(queue):
            pipe.llen(name)
        return sum(pipe.execute())

    def queued_jobs(self, queue: str, limit: int = 10000) -> int:
        """Jobs still QUEUED among those the waiting messages carry (the first ``limit`` read):
        a job cancelled while queued leaves its message behind and is not counted."""
        ids: set[str] = set()
        for name in _queue_lists(queue):
            for raw in self.redis.lrange(name, 0, limit - 1):
                job_id = _job_id_of(raw)
                if job_id:
                    ids.add(job_id)
        if not ids:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.keys.job(job_id), "state")
        return sum(1 for state in pipe.execute() if state is not None and int(state) == pb.JOB_STATE_QUEUED)

    def running_and_retrying(self) -> tuple[int, int]:
        """Of the running set's jobs (one entry per attempt a worker holds or a delayed re-queue
        waits for: a few per worker), by their record's state: those RUNNING or CANCELLING on a
        worker, and those re-queued after the artifact store stopped their attempt, QUEUED
        until they start again."""
        ids = [_text(i) for i in self.redis.zrange(self.keys.running(), 0, -1)]  # type: ignore[arg-type]
        if not ids:
            return 0, 0
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.keys.job(job_id), "state")
        states = [int(state) for state in pipe.execute() if state is not None]
        running = sum(1 for state in states if state in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_CANCELLING))
        return running, states.count(pb.JOB_STATE_QUEUED)


def _queue_lists(queue: str) -> list[str]:
    return [queue] + [f"{queue}{_PRIORITY_SEP}{p}" for p in (3, 6, 9)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _job_id_of(raw: bytes | str) -> str | None:
    """The job id a Celery message (kombu's Redis JSON envelope, protocol 2) carries."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
