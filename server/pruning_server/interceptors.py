"""Server interceptor: maps unexpected failures to status codes and counts every call.

Handlers answer bad input themselves (INVALID_ARGUMENT, NOT_FOUND, ...). What escapes them
is mapped here, in one place: a Redis or broker outage becomes UNAVAILABLE (clients retry
it), anything else INTERNAL with the traceback in the server log, never UNKNOWN.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import kombu.exceptions
import redis
from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

RPCS = Counter("pruning_rpc_total", "gRPC calls handled", ["method", "code"])
LATENCY = Histogram("pruning_rpc_seconds", "gRPC call duration (streams: until their end)", ["method"])
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError, ConnectionError)


async def _answer_failure(context, method: str, exc: Exception) -> None:
    if isinstance(exc, _TRANSIENT):
        log.warning("%s: backing store unavailable: %s", method, exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the job store or broker is unavailable; retry shortly")
    log.exception("%s failed", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")


def _code(context, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def _wrap_unary(behaviour, method: str):
    async def handler(request, context):
        started, failed = time.perf_counter(), True
        try:
            response = await behaviour(request, context)
            failed = False
            return response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status here, in one place
            await _answer_failure(context, method, exc)
        finally:
            RPCS.labels(method, _code(context, failed)).inc()
            LATENCY.labels(method).observe(time.perf_counter() - started)

    return handler


def _wrap_stream(behaviour, method: str):
    async def handler(request, context):
        started, failed = time.perf_counter(), True
        try:
            async for response in behaviour(request, context):
                yield response
            failed = False
        except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001
            await _answer_failure(context, method, exc)
        finally:
            RPCS.labels(method, _code(context, failed)).inc()
            LATENCY.labels(method).observe(time.perf_counter() - started)

    return handler


class ErrorsAndMetrics(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith("/pruning.v1."):
            return handler  # health and reflection stay as grpc ships them
        kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, method), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, method), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream, method), **kwargs)
        return grpc.stream_stream_rpc_method_handler(_wrap_stream(handler.stream_stream, method), **kwargs)
