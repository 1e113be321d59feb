"""Server interceptors: error mapping, metrics and tracing, one wrapper per RPC.

Handlers raise :class:`~pruning_server.errors.Failure` for bad input (INVALID_ARGUMENT,
NOT_FOUND, ...). Everything that escapes them is answered here, in one place: a Failure with
its code and details (echoed input cut short), a refused model or dataset INVALID_ARGUMENT
with its field, a request that does not decode INVALID_ARGUMENT, a Redis or broker outage
UNAVAILABLE (clients retry it), anything else INTERNAL with the traceback in the server log,
never UNKNOWN.

Metrics follow the go-grpc-prometheus / py-grpc-prometheus names: ``grpc_server_started_total``,
``grpc_server_handled_total`` (with ``grpc_code``), ``grpc_server_handling_seconds``,
``grpc_server_msg_received_total`` and ``grpc_server_msg_sent_total``, labelled by
``grpc_type``, ``grpc_service`` and ``grpc_method``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import kombu.exceptions
import redis
from prometheus_client import Counter, Histogram

from pruning import wire
from pruning.v1 import pruning_pb2 as pb
from pruning_core import objectstore
from pruning_core.modelcheck import ModelRejected

from .errors import Cut, Failure, Invalid, model_refused, to_status

log = logging.getLogger(__name__)

_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
STARTED = Counter("grpc_server_started_total", "Total number of RPCs started on the server.", _LABELS)
HANDLED = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    [*_LABELS, "grpc_code"],
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
    _LABELS,
)
RECEIVED = Counter(
    "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", _LABELS
)
SENT = Counter("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", _LABELS)

_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError, ConnectionError)
_OWN = "/pruning.v1."  # errors are mapped for our services only; health and reflection stay as grpc ships them
_KINDS = {
    "unary_unary": ("unary", grpc.unary_unary_rpc_method_handler),
    "stream_unary": ("client_stream", grpc.stream_unary_rpc_method_handler),
    "unary_stream": ("server_stream", grpc.unary_stream_rpc_method_handler),
    "stream_stream": ("bidi_stream", grpc.stream_stream_rpc_method_handler),
}

# An upload's chunks are read by hand: the handler gets a view of the received bytes, not two
# copies made by protobuf (pruning.wire); the wire format is protobuf's.
_FRAMED_REQUESTS: dict[str, Callable[[bytes], Any]] = dict.fromkeys(wire.UPLOAD_METHODS, wire.parse_upload_request)

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]
Wrapper = Callable[[Behaviour, str, str], Behaviour]  # (behaviour, method, grpc_type) -> behaviour


# The most bytes of one request message of an RPC other than the uploads (whose chunks may take
# the channel's 8 MiB). The largest valid CreateSweep (every list and map of its spec at its
# bound, names of validation.MAX_LAYER_NAME characters, every label at its longest) is about
# 1.6 MB (tests/unit/test_validation.py holds it under this bound).
# Parsing a larger message would only hold the server's event loop (about 0.2 s per MiB of map
# entries; 8 MiB of labels took it 2.6 s) before its checks refuse it.
MAX_REQUEST_BYTES = 2 << 20


class Undecodable:
    """Stands for a request message that did not decode; the handler wrapper refuses it."""

    def __init__(self, error: Exception):
        self.error = error


class Oversized:
    """Stands for a request message past :data:`MAX_REQUEST_BYTES`, left unparsed; the handler
    wrapper refuses it (RESOURCE_EXHAUSTED, as grpc answers a message past the channel's limit)."""

    def __init__(self, size: int):
        self.size = size


def _tolerant(deserializer: Callable[[bytes], Any] | None, max_bytes: int | None) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises (grpc would answer UNKNOWN and log a traceback), and
    parses no message past ``max_bytes``."""
    if deserializer is None:
        return None
    decode = deserializer

    def tolerant(data: bytes) -> Any:
        if max_bytes is not None and len(data) > max_bytes:
            return Oversized(len(data))
        try:
            return decode(data)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's bad message
            return Undecodable(exc)

    return tolerant


def _refuse_undecodable(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise Invalid([("request", f"the message does not decode as this RPC's request: {request.error}")])
    if isinstance(request, Oversized):
        raise Failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request message is {request.size} bytes; this RPC takes at most {MAX_REQUEST_BYTES}",
        )
    return request


def wrap_handler(
    handler: grpc.RpcMethodHandler, method: str, unary: Wrapper, stream: Wrapper, tolerant: bool = False
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped: ``unary`` for unary responses, ``stream``
    for streamed ones; ``tolerant`` hands undecodable requests to the wrapper (and reads the
    uploads' chunks by hand)."""
    for attribute, (grpc_type, factory) in _KINDS.items():
        behaviour = getattr(handler, attribute)
        if behaviour:
            wrap = stream if handler.response_streaming else unary
            decode = handler.request_deserializer
            return factory(
                wrap(behaviour, method, grpc_type),
                request_deserializer=(
                    _tolerant(
                        _FRAMED_REQUESTS.get(method, decode),
                        None if method in _FRAMED_REQUESTS else MAX_REQUEST_BYTES,
                    )
                    if tolerant
                    else decode
                ),
                response_serializer=_passthrough(handler.response_serializer),
            )
    return handler


def _passthrough(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The serializer, except that a response already serialized (``bytes``: a download's
    chunks, framed as they are read) goes out as it is."""
    if serializer is None or getattr(serializer, "passes_bytes", False):
        return serializer
    encode = serializer

    def serialize(message: Any) -> bytes:
        return message if type(message) is bytes else encode(message)

    serialize.passes_bytes = True  # type: ignore[attr-defined]
    return serialize


def code_name(context: grpc.aio.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


async def _answer_failure(context: grpc.aio.ServicerContext, method: str, exc: Exception, cut: Cut) -> None:
    if isinstance(exc, ModelRejected):
        exc = model_refused(exc)
    if isinstance(exc, Failure):
        if exc.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            log.error("%s: %s", method, cut(exc.message))
        await context.abort_with_status(to_status(exc, cut))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        log.error("%s: the server's disk is full: %s", method, exc)
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the server's storage is full; retry later (the operator must free space)",
        )
    if isinstance(exc, _TRANSIENT):
        log.warning("%s: backing store unavailable: %s", method, exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the job store or broker is unavailable; retry shortly")
    if isinstance(exc, objectstore.refused_errors()):  # credentials rotated or revoked under a running server
        log.error("%s: the artifact store refused this server's credentials: %s", method, cut(str(exc)))
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            "the artifact store refused the server's credentials; retry later (the operator must fix them)",
        )
    if isinstance(exc, objectstore.unavailable_errors()):
        log.warning("%s: the artifact store did not answer: %s", method, cut(str(exc)))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the artifact store is unavailable; retry shortly")
    log.exception("%s failed", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")


class _Call:
    """The metrics of one RPC."""

    def __init__(self, method: str, grpc_type: str):
        service, _, name = method.lstrip("/").rpartition("/")
        self.labels = (grpc_type, service, name)
        self.started = time.perf_counter()
        self.received = RECEIVED.labels(*self.labels)
        self.sent = SENT.labels(*self.labels)
        STARTED.labels(*self.labels).inc()

    def request(self, request: Any, grpc_type: str) -> Any:
        if grpc_type in ("client_stream", "bidi_stream"):
            return self._count(request)
        self.received.inc()
        return _refuse_undecodable(request)

    async def _count(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            self.received.inc()
            yield _refuse_undecodable(request)

    def done(self, code: str) -> None:
        HANDLED.labels(*self.labels, code).inc()
        HANDLING.labels(*self.labels).observe(time.perf_counter() - self.started)


def _metrics_unary(behaviour: Behaviour, method: str, grpc_type: str, cut: Cut) -> Behaviour:
    map_errors = method.startswith(_OWN)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call, code = _Call(method, grpc_type), None
        try:
            response = await behaviour(call.request(request, grpc_type), context)
            call.sent.inc()
            code = code_name(context, failed=False)
            return response
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if not map_errors:
                raise
            await _answer_failure(context, method, exc, cut)
        finally:
            call.done(code or code_name(context, failed=True))

    return handler


def _metrics_stream(behaviour: Behaviour, method: str, grpc_type: str, cut: Cut) -> Behaviour:
    map_errors = method.startswith(_OWN)

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call, code = _Call(method, grpc_type), None
        try:
            async for response in behaviour(call.request(request, grpc_type), context):
                call.sent.inc()
                yield response
            code = code_name(context, failed=False)
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if not map_errors:
                raise
            await _answer_failure(context, method, exc, cut)
        finally:
            call.done(code or code_name(context, failed=True))

    return handler


class ErrorsAndMetrics(grpc.aio.ServerInterceptor):
    """Maps what escapes our handlers to a status code and counts every RPC.

    Args:
        max_error_bytes: echoed text in an answer (message, each field and description) is
            cut to this many bytes of UTF-8.
        max_violations: field violations kept in one answer (then "and N more").
    """

    def __init__(self, max_error_bytes: int = 200, max_violations: int = 10):
        self.cut = Cut(max_error_bytes, max_violations)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return handler
        own = details.method.startswith(_OWN)

        def unary(behaviour: Behaviour, method: str, grpc_type: str) -> Behaviour:
            return _metrics_unary(behaviour, method, grpc_type, self.cut)

        def stream(behaviour: Behaviour, method: str, grpc_type: str) -> Behaviour:
            return _metrics_stream(behaviour, method, grpc_type, self.cut)

        return wrap_handler(handler, details.method, unary, stream, tolerant=own)


# -- tracing -------------------------------------------------------------------------------

# Server-side codes that mark a span as an error (OpenTelemetry semantic conventions for gRPC).
_ERROR_CODES = {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}


class Tracing(grpc.aio.ServerInterceptor):
    """One SERVER span per RPC of our services, continuing the caller's trace (W3C
    ``traceparent`` metadata). Put it before :class:`ErrorsAndMetrics` so that the span sees
    the mapped status."""

    def __init__(self) -> None:
        from opentelemetry import trace

        self.tracer = trace.get_tracer("pruning_server")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(_OWN):
            return handler
        return wrap_handler(handler, details.method, self._unary, self._stream)

    def _start(self, method: str, context: grpc.aio.ServicerContext) -> tuple[Any, Any]:
        """A started SERVER span and the context that makes it current."""
        from opentelemetry import propagate, trace

        carrier = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        parent = propagate.extract(carrier)
        service, _, name = method.lstrip("/").rpartition("/")
        span = self.tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        return span, trace.set_span_in_context(span, parent)

    @staticmethod
    def _end(span: Any, context: grpc.aio.ServicerContext, failed: bool) -> None:
        from opentelemetry.trace import Status, StatusCode

        code = code_name(context, failed)
        status = next((c for c in grpc.StatusCode if c.name == code), grpc.StatusCode.UNKNOWN)
        span.set_attribute("rpc.grpc.status_code", status.value[0])
        if code in _ERROR_CODES:
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()

    def _unary(self, behaviour: Behaviour, method: str, grpc_type: str) -> Behaviour:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            from opentelemetry import context as otel_context

            span, current = self._start(method, context)
            token = otel_context.attach(current)
            failed = True
            try:
                response = await behaviour(request, context)
                failed = False
                if isinstance(response, pb.Job):
                    span.set_attribute("pruning.job_id", response.id)
                return response
            finally:
                otel_context.detach(token)
                self._end(span, context, failed)

        return handler

    def _stream(self, behaviour: Behaviour, method: str, grpc_type: str) -> Behaviour:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            from opentelemetry import context as otel_context

            span, current = self._start(method, context)
            responses = aiter(behaviour(request, context))
            failed = True
            try:
                while True:
                    # The span is current while the handler runs, never across a yield: the
                    # stream may be closed from another context.
                    token = otel_context.attach(current)
                    try:
                        response = await anext(responses)
                    except StopAsyncIteration:
                        break
                    finally:
                        otel_context.detach(token)
                    yield response
                failed = False
            finally:
                self._end(span, context, failed)

        return handler
