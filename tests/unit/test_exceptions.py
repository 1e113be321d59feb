import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from pruning_client import exceptions


class FakeCall(grpc.RpcError, grpc.Call):
    """A failed call as grpc hands it over (code, details, trailing metadata)."""

    def __init__(self, code, details="boom", status=None):
        self._code, self._details = code, details
        self._trailing = (("grpc-status-details-bin", status.SerializeToString()),) if status else ()

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing

    def initial_metadata(self): ...
    def is_active(self): ...
    def time_remaining(self): ...
    def cancel(self): ...
    def add_callback(self, callback): ...


@pytest.mark.parametrize(
    "code, cls, exit_code",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, exceptions.InvalidArgument, 2),
        (grpc.StatusCode.NOT_FOUND, exceptions.NotFound, 3),
        (grpc.StatusCode.UNAUTHENTICATED, exceptions.Unauthenticated, 4),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, exceptions.ResourceExhausted, 5),
        (grpc.StatusCode.UNAVAILABLE, exceptions.Unavailable, 7),
        (grpc.StatusCode.DATA_LOSS, exceptions.PruningError, 1),
    ],
)
def test_status_codes_map_to_classes(code, cls, exit_code):
    error = exceptions.from_rpc_error(FakeCall(code))
    assert type(error) is cls and error.exit_code == exit_code


def test_field_violations_are_read_from_details():
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="spec.model_id", description="required")]
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="boom")
    status.details.add().Pack(bad)
    error = exceptions.from_rpc_error(FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "boom", status))
    assert error.field_violations == [("spec.model_id", "required")]
