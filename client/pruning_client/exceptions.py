"""SDK exceptions: one class per gRPC status code, raised as soon as a call returns.

The CLI maps each class to an exit code (``exit_code``), so pipelines can branch on it.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class PruningError(Exception):
    """Base class of every SDK error."""

    code: grpc.StatusCode | None = None
    exit_code = 1

    def __init__(self, message: str, *, field_violations: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.message = message
        self.field_violations = field_violations or []


class InvalidArgument(PruningError):
    code, exit_code = grpc.StatusCode.INVALID_ARGUMENT, 2


class OutOfRange(PruningError):
    code, exit_code = grpc.StatusCode.OUT_OF_RANGE, 2


class NotFound(PruningError):
    code, exit_code = grpc.StatusCode.NOT_FOUND, 3


class Unauthenticated(PruningError):
    code, exit_code = grpc.StatusCode.UNAUTHENTICATED, 4


class PermissionDenied(PruningError):
    code, exit_code = grpc.StatusCode.PERMISSION_DENIED, 4


class AlreadyExists(PruningError):
    code, exit_code = grpc.StatusCode.ALREADY_EXISTS, 6


class ResourceExhausted(PruningError):
    code, exit_code = grpc.StatusCode.RESOURCE_EXHAUSTED, 5


class FailedPrecondition(PruningError):
    code, exit_code = grpc.StatusCode.FAILED_PRECONDITION, 6


class Unavailable(PruningError):
    code, exit_code = grpc.StatusCode.UNAVAILABLE, 7


class DeadlineExceeded(PruningError):
    code, exit_code = grpc.StatusCode.DEADLINE_EXCEEDED, 7


class Cancelled(PruningError):
    code, exit_code = grpc.StatusCode.CANCELLED, 1


class Internal(PruningError):
    code, exit_code = grpc.StatusCode.INTERNAL, 1


class JobFailed(PruningError):
    """The job ended FAILED; ``job_code`` is the google.rpc code of its error."""

    exit_code = 8

    def __init__(self, message: str, *, job_code: int = 0, job=None):
        super().__init__(message)
        self.job_code, self.job = job_code, job


class JobCancelled(PruningError):
    """The job ended CANCELLED."""

    exit_code = 9

    def __init__(self, message: str, *, job=None):
        super().__init__(message)
        self.job = job


class JobTimeout(PruningError):
    """``result(timeout=)`` ran out before the job ended."""

    exit_code = 10


class IntegrityError(PruningError):
    """A downloaded artifact does not match its sha256."""

    exit_code = 11


_BY_CODE = {cls.code: cls for cls in PruningError.__subclasses__() if cls.code is not None}


def from_rpc_error(error: grpc.RpcError) -> PruningError:
    """Converts a failed call into the SDK's exception (with BadRequest field violations)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    violations: list[tuple[str, str]] = []
    try:
        status = rpc_status.from_call(error)
    except (AttributeError, ValueError):
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [(v.field, v.description) for v in bad.field_violations]
    cls = _BY_CODE.get(code, PruningError)
    details = error.details() if hasattr(error, "details") else str(error)
    return cls(f"{code.name if code else 'UNKNOWN'}: {details}", field_violations=violations)
