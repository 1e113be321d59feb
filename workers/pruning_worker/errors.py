"""Outcomes of the pipeline other than success."""

from google.rpc import code_pb2

from pruning_core.store import STORE_ERRORS

__all__ = [
    "STORE_ERRORS",
    "Cancelled",
    "ConversionError",
    "InputDataLoss",
    "JobDeadlineExceeded",
    "JobInputError",
    "OutcomeError",
    "WorkerStopping",
]


class JobInputError(ValueError):
    """The job's inputs are unusable (model, dataset or spec): the job fails, no retry."""

    code: int = code_pb2.INVALID_ARGUMENT


class OutcomeError(JobInputError):
    """Training ran, but what came out is unusable (a non-finite loss or result, a sparsity short
    of the target): the job fails rather than hand it back."""

    code: int = code_pb2.FAILED_PRECONDITION


class InputDataLoss(JobInputError):
    """A job input the tenant holds a record of whose bytes the artifact store no longer has,
    or has other bytes of: no retry brings them back."""

    code: int = code_pb2.DATA_LOSS


class Cancelled(Exception):
    """The job was cancelled while it ran."""


class WorkerStopping(Exception):
    """The worker is shutting down: the attempt stops and the job goes back to the queue."""


class JobDeadlineExceeded(Exception):
    """The job ran past the configured time limit."""


# What a check between steps raises to stop the job: a part the job could go without (a figure
# of the report) passes them on rather than warn.
STOPS = (Cancelled, WorkerStopping, JobDeadlineExceeded)


class ConversionError(RuntimeError):
    """A Keras 3 model and its tf_keras translation disagree: the service's fault, not the input's."""
