"""SDK exceptions: one class per gRPC status code, raised as soon as a call returns.

An error from a call keeps what the server said: ``code`` (a ``grpc.StatusCode``), ``details``
(the server's message), ``field_violations`` (from a ``google.rpc.BadRequest`` detail),
``retry_after_s`` (from a ``google.rpc.RetryInfo`` detail) and the original ``grpc.RpcError``
as ``rpc_error`` (also the exception's ``__cause__``).

The CLI maps each class to an exit code (``exit_code``), so pipelines can branch on it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pruning.v1 import pruning_pb2 as pb

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "IntegrityError",
    "Internal",
    "InvalidArgument",
    "JobCancelled",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PruningError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_rpc_error",
]

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
# googleapis-common-protos ships no type information: loaded untyped, read through the typed
# helpers below, so a user's ``mypy --strict`` never meets it.
_status_pb2: Any = importlib.import_module("google.rpc.status_pb2")
_error_details_pb2: Any = importlib.import_module("google.rpc.error_details_pb2")


class PruningError(Exception):
    """Base class of every SDK error.

    Example:
        >>> try:                                              # doctest: +SKIP
        ...     client.submit(spec)
        ... except InvalidArgument as error:
        ...     print(error.code, error.details, error.field_violations)
    """

    code: grpc.StatusCode | None = None
    """The call's status code (None for errors the SDK itself raises, such as JobFailed)."""
    exit_code: int = 1
    """The CLI's exit status for this error."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: str | None = None,
        field_violations: list[tuple[str, str]] | None = None,
        rpc_error: grpc.RpcError | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        """``"CODE: details"`` for a failed call, else the SDK's own message."""
        if code is not None:
            self.code = code
        self.details = message if details is None else details
        """What the server said (``grpc.Call.details()``), without the code."""
        self.field_violations: list[tuple[str, str]] = field_violations or []
        """``(field path, description)`` pairs of a ``google.rpc.BadRequest`` detail."""
        self.rpc_error = rpc_error
        """The original ``grpc.RpcError`` (None when the SDK raised this itself)."""
        self.retry_after_s: float | None = None
        """Seconds the server asks to wait before a retry (a ``google.rpc.RetryInfo`` detail,
        on RESOURCE_EXHAUSTED from a busy cap); None when waiting would not help."""


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


class Unimplemented(PruningError):
    """UNIMPLEMENTED: the server does not offer this (a server that runs no sweeps asked for a
    budget search, an RPC an older server lacks)."""

    code, exit_code = grpc.StatusCode.UNIMPLEMENTED, 1


class Aborted(PruningError):
    code, exit_code = grpc.StatusCode.ABORTED, 1


class Unknown(PruningError):
    code, exit_code = grpc.StatusCode.UNKNOWN, 1


class JobFailed(PruningError):
    """The job ended FAILED; ``job_code`` is the google.rpc code of its error (3), and
    ``job_status`` the same as a ``grpc.StatusCode`` (INVALID_ARGUMENT)."""

    exit_code = 8

    def __init__(self, message: str, *, job_code: int = 0, job: pb.Job | None = None) -> None:
        super().__init__(message)
        self.job_code, self.job = job_code, job

    @property
    def job_status(self) -> grpc.StatusCode | None:
        """The job error's code as a ``grpc.StatusCode``; None for a code gRPC does not know."""
        return next((c for c in grpc.StatusCode if c.value[0] == self.job_code), None)


class JobCancelled(PruningError):
    """The job ended CANCELLED."""

    exit_code = 9

    def __init__(self, message: str, *, job: pb.Job | None = None) -> None:
        super().__init__(message)
        self.job = job


class JobTimeout(PruningError, TimeoutError):
    """``result(timeout=)`` ran out before the job (or sweep) ended; ``job`` (or ``sweep``) is
    its record as last seen. Also a ``TimeoutError``."""

    exit_code = 10

    def __init__(self, message: str, *, job: pb.Job | None = None, sweep: pb.Sweep | None = None) -> None:
        super().__init__(message)
        self.job = job
        self.sweep = sweep


class IntegrityError(PruningError):
    """A downloaded artifact does not match its sha256, the server stored an upload under
    another id than the file's, or the file changed while it was uploaded."""

    exit_code = 11


class DataLoss(IntegrityError):
    """DATA_LOSS: the server holds the artifact's record but its store lost the bytes (or they
    no longer hash to its id). Uploading the same file again stores them again."""

    code = grpc.StatusCode.DATA_LOSS


def _all_subclasses(cls: type[PruningError]) -> list[type[PruningError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_all_subclasses(sub))]


_BY_CODE: dict[grpc.StatusCode, type[PruningError]] = {
    cls.code: cls for cls in _all_subclasses(PruningError) if cls.code is not None
}


def _call_value(error: grpc.RpcError, name: str) -> Any:
    """``error.<name>()``: sync calls (``grpc.Call``) and ``grpc.aio.AioRpcError`` both have them."""
    method = getattr(error, name, None)
    return method() if callable(method) else None


def _status_details(error: grpc.RpcError) -> tuple[list[tuple[str, str]], float | None]:
    """The BadRequest field violations and the RetryInfo delay (seconds) in the call's
    ``google.rpc.Status`` trailer."""
    violations: list[tuple[str, str]] = []
    retry_after: float | None = None
    for key, value in _call_value(error, "trailing_metadata") or ():
        if key != _STATUS_DETAILS_KEY:
            continue
        try:
            status = _status_pb2.Status.FromString(value)
        except DecodeError:  # a malformed trailer must not hide the error itself
            break
        for detail in status.details:
            if detail.Is(_error_details_pb2.BadRequest.DESCRIPTOR):
                bad = _error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [(str(v.field), str(v.description)) for v in bad.field_violations]
            elif detail.Is(_error_details_pb2.RetryInfo.DESCRIPTOR):
                info = _error_details_pb2.RetryInfo()
                detail.Unpack(info)
                retry_after = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return violations, retry_after


def from_rpc_error(error: grpc.RpcError) -> PruningError:
    """The SDK's exception for a failed call (sync or ``grpc.aio``), with its status code,
    details, BadRequest field violations and the original error.

    Example:
        >>> try:                                              # doctest: +SKIP
        ...     stub.GetJob(request)
        ... except grpc.RpcError as error:
        ...     raise from_rpc_error(error) from error
    """
    code = _call_value(error, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = str(_call_value(error, "details") or "") if callable(getattr(error, "details", None)) else str(error)
    cls = _BY_CODE.get(code, PruningError)
    violations, retry_after = _status_details(error)
    out = cls(f"{code.name}: {details}", code=code, details=details, field_violations=violations, rpc_error=error)
    out.retry_after_s = retry_after
    return out


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Turns a ``grpc.RpcError`` raised inside into the SDK's exception (``from`` the original);
    used by the sync and the asyncio client alike."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error
