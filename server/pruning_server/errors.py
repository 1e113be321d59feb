"""gRPC error answers, in one place.

Handlers raise :class:`Failure` (or :class:`Invalid`, :class:`Exhausted`); the errors
interceptor turns them, and everything else that escapes a handler, into a status with
``google.rpc`` details (:func:`to_status`). Echoed input is cut short there and the number
of field violations capped, so a hostile value can never blow up the trailers.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from pruning_core.modelcheck import ModelRejected


class Failure(Exception):
    """An answer to the client: a status code, a message and optional ``google.rpc`` details."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def details(self, cut: Cut) -> list:
        return []


class Invalid(Failure):
    """INVALID_ARGUMENT (or OUT_OF_RANGE) with a BadRequest of (field, description) pairs."""

    def __init__(
        self,
        violations: Iterable[tuple[str, str]],
        message: str | None = None,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
        unlisted: int = 0,
    ):
        self.violations = list(violations)
        self.unlisted = unlisted  # problems counted beyond ``violations``, not described
        super().__init__(code, message or "; ".join(f"{f}: {d}" for f, d in self.violations))

    def details(self, cut: Cut) -> list:
        # A description is the service's own text around what it echoes (the advice often comes
        # last): it may take twice the bytes of a field, within the answer's budget.
        pairs: list[tuple[str, str]] = []
        used = 0
        for f, d in self.violations[: cut.max_violations]:
            pair = (cut(f), cut(d, 2 * cut.max_bytes))
            size = len(pair[0].encode()) + len(pair[1].encode())
            if pairs and used + size > cut.details_budget:
                break
            pairs.append(pair)
            used += size
        if (more := len(self.violations) - len(pairs) + self.unlisted) > 0:
            pairs.append(("", f"and {more} more problem{'s' if more > 1 else ''}"))
        return [
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in pairs]
            )
        ]


def model_refused(refused: ModelRejected) -> Invalid:
    """A model refused at upload: with several refused layers, a message that counts them,
    each described in its own violation."""
    if refused.total == 1:
        return Invalid(refused.violations)
    message = f"{refused.field}: the model has {refused.total} refused layers"
    return Invalid(refused.violations, message, unlisted=refused.unlisted)


class Exhausted(Failure):
    """RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` hint."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{message}; retry in {retry_after_s:g} s")
        self.retry_after_s = retry_after_s

    def details(self, cut: Cut) -> list:
        detail = error_details_pb2.RetryInfo()
        detail.retry_delay.FromMilliseconds(int(self.retry_after_s * 1000))
        return [detail]


class Cut:
    """Cuts echoed text to ``max_bytes`` of UTF-8 and keeps ``max_violations`` violations."""

    def __init__(self, max_bytes: int, max_violations: int):
        self.max_bytes, self.max_violations = max_bytes, max_violations

    def __call__(self, text: str, max_bytes: int | None = None) -> str:
        limit = self.max_bytes if max_bytes is None else max_bytes
        raw = text.encode("utf-8", "replace")
        if len(raw) <= limit:
            return text
        return raw[: max(0, limit - 3)].decode("utf-8", "ignore") + "..."

    @property
    def details_budget(self) -> int:
        """Bytes of field violations one answer carries: as many as ``max_violations`` + 1
        pairs cut to ``max_bytes`` each would take (what the trailer held before descriptions
        could be longer), so the status stays far below gRPC's metadata limit."""
        return (self.max_violations + 1) * 2 * self.max_bytes


def to_status(failure: Failure, cut: Cut) -> grpc.Status:
    status = status_pb2.Status(code=failure.code.value[0], message=cut(failure.message))
    for detail in failure.details(cut):
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)
