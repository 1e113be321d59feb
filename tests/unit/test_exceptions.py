import grpc
import grpc.aio
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
        (grpc.StatusCode.DATA_LOSS, exceptions.DataLoss, 11),  # the store lost the bytes: integrity
    ],
)
def test_status_codes_map_to_classes(code, cls, exit_code):
    error = exceptions.from_rpc_error(FakeCall(code))
    assert type(error) is cls and error.exit_code == exit_code


def test_field_violations_are_read_from_details():
    error = exceptions.from_rpc_error(FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "boom", bad_request_status()))
    assert error.field_violations == [("spec.model_id", "required")]


def bad_request_status():
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field="spec.model_id", description="required")]
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="boom")
    status.details.add().Pack(bad)
    return status


def test_the_error_keeps_code_details_and_the_original_rpc_error():
    call = FakeCall(grpc.StatusCode.NOT_FOUND, "no job j")
    error = exceptions.from_rpc_error(call)
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.details == "no job j" and error.message == "NOT_FOUND: no job j"
    assert error.rpc_error is call and error.field_violations == []


def test_every_error_status_code_has_its_class_named_after_it():
    """One class per code, as the README says: ``except Unimplemented`` needs the class."""
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        error = exceptions.from_rpc_error(FakeCall(code))
        assert type(error) is not exceptions.PruningError and error.code == code
        assert type(error).__name__.lower() == code.name.replace("_", "").lower(), code
        assert type(error).__name__ in exceptions.__all__


def test_every_exception_class_is_exported():
    import pruning_client

    public = {cls.__name__ for cls in exceptions._all_subclasses(exceptions.PruningError)}
    assert public <= set(exceptions.__all__) and public <= set(pruning_client.__all__)


def test_rpc_errors_raises_from_the_original():
    call = FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "boom", bad_request_status())
    with pytest.raises(exceptions.InvalidArgument) as raised, exceptions.rpc_errors():
        raise call
    assert raised.value.__cause__ is call and raised.value.rpc_error is call
    assert raised.value.field_violations == [("spec.model_id", "required")]


def test_asyncio_errors_map_the_same_way():
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", bad_request_status().SerializeToString()))
    call = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), trailing, details="boom")
    error = exceptions.from_rpc_error(call)
    assert type(error) is exceptions.InvalidArgument and error.rpc_error is call
    assert error.details == "boom" and error.field_violations == [("spec.model_id", "required")]


def test_a_malformed_status_detail_does_not_hide_the_error():
    call = FakeCall(grpc.StatusCode.INTERNAL, "boom")
    call._trailing = (("grpc-status-details-bin", b"\xff\xff not a status"),)
    error = exceptions.from_rpc_error(call)
    assert type(error) is exceptions.Internal and error.field_violations == []


def test_sdk_raised_errors_have_no_rpc_error():
    error = exceptions.JobTimeout("still RUNNING")
    assert error.code is None and error.rpc_error is None and error.details == "still RUNNING"


def test_a_failed_job_s_code_is_also_a_grpc_status():
    import grpc

    from pruning_client import JobFailed

    assert JobFailed("x", job_code=3).job_status == grpc.StatusCode.INVALID_ARGUMENT
    assert JobFailed("x", job_code=4).job_status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert JobFailed("x", job_code=99).job_status is None


def test_job_spec_says_what_a_dataset_is_when_given_arrays():
    import numpy as np

    from pruning_client import job_spec

    with pytest.raises(TypeError, match="upload arrays first"):
        job_spec("a" * 64, dataset=(np.zeros(3), np.zeros(3)))  # type: ignore[arg-type]


def test_job_spec_takes_keras_short_names_of_the_regression_losses():
    from pruning_client import job_spec

    spec = job_spec("a" * 64, loss="mse", output_losses={"box": "mae", "cls": "sparse_categorical_crossentropy"})
    assert spec.training.loss == "mean_squared_error"
    assert dict(spec.training.output_losses) == {"box": "mean_absolute_error", "cls": "sparse_categorical_crossentropy"}
