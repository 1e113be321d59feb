"""gRPC error answers with google.rpc details, in one place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


async def abort_invalid(
    context: grpc.aio.ServicerContext, violations: Iterable[tuple[str, str]], message: str | None = None
) -> NoReturn:
    """Aborts with INVALID_ARGUMENT and a BadRequest listing (field, description) pairs."""
    detail = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
    )
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message=message or "; ".join(f"{f}: {d}" for f, d in violations),
    )
    status.details.add().Pack(detail)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # it raises; this tells type checkers


async def abort_exhausted(context: grpc.aio.ServicerContext, message: str, retry_after_s: float) -> NoReturn:
    """Aborts with RESOURCE_EXHAUSTED and a ``google.rpc.RetryInfo`` hint."""
    detail = error_details_pb2.RetryInfo()
    detail.retry_delay.FromMilliseconds(int(retry_after_s * 1000))
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=f"{message}; retry in {retry_after_s:g} s")
    status.details.add().Pack(detail)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("abort returned")
