"""Python SDK of the pruning service (no TensorFlow needed).

Example:
    >>> from pruning_client import Client, job_spec, polynomial_decay   # doctest: +SKIP
    >>> with Client("localhost:50051") as client:
    ...     model = client.upload_model("mnist.keras")
    ...     job = client.submit(job_spec(model.id, schedule=polynomial_decay(0.5, 0.8)))
    ...     for event in job.watch():
    ...         print(event)
    ...     print(job.result().pruned_accuracy)

The asyncio client is :class:`pruning_client.aio.AsyncClient`.
"""

import os as _os

# gRPC's documented default log level is ERROR, but its C core prints INFO lines (a failed TLS
# handshake, one per retry) to stderr unless GRPC_VERBOSITY is set before grpc is first imported.
# A caller's own setting is kept.
_os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .aio import AsyncClient, AsyncJobHandle, AsyncSweepHandle
from .client import Client, ClientOptions, DownloadProgress, UploadProgress
from .exceptions import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    IntegrityError,
    Internal,
    InvalidArgument,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PruningError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_rpc_error,
)
from .job import TERMINAL, JobHandle, is_terminal, is_terminal_event
from .results import JobPlan, LayerPlan, LayerSparsity, LayerSummary, ModelSummary, PruneResult, TensorSummary
from .sources import DatasetSource, ModelSource
from .specs import (
    EXPORT_FORMATS,
    IMPORTANCE_CRITERIA,
    accuracy_budget,
    constant_sparsity,
    export_format,
    export_format_name,
    job_spec,
    polynomial_decay,
    structured,
)
from .sweeps import SweepHandle, sweep_spec

__all__ = [
    "EXPORT_FORMATS",
    "IMPORTANCE_CRITERIA",
    "TERMINAL",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncJobHandle",
    "AsyncSweepHandle",
    "Cancelled",
    "Client",
    "ClientOptions",
    "DataLoss",
    "DatasetSource",
    "DeadlineExceeded",
    "DownloadProgress",
    "FailedPrecondition",
    "IntegrityError",
    "Internal",
    "InvalidArgument",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobPlan",
    "JobTimeout",
    "LayerPlan",
    "LayerSparsity",
    "LayerSummary",
    "ModelSource",
    "ModelSummary",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PruneResult",
    "PruningError",
    "ResourceExhausted",
    "SweepHandle",
    "TensorSummary",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "UploadProgress",
    "accuracy_budget",
    "constant_sparsity",
    "export_format",
    "export_format_name",
    "from_rpc_error",
    "is_terminal",
    "is_terminal_event",
    "job_spec",
    "polynomial_decay",
    "structured",
    "sweep_spec",
]
