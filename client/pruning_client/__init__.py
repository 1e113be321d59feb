"""Python SDK of the pruning service (no TensorFlow needed).

Example:
    >>> from pruning_client import Client, job_spec, polynomial_decay   # doctest: +SKIP
    >>> with Client("localhost:50051") as client:
    ...     model = client.upload_model("mnist.keras")
    ...     job = client.submit(job_spec(model.id, schedule=polynomial_decay(0.5, 0.8)))
    ...     for event in job.watch():
    ...         print(event)
    ...     print(job.result().pruned_accuracy)
"""

from .client import Client
from .exceptions import *  # noqa: F401,F403
from .job import JobHandle
from .results import LayerSparsity, PruneResult
from .specs import constant_sparsity, job_spec, polynomial_decay

__all__ = ["Client", "JobHandle", "PruneResult", "LayerSparsity", "job_spec", "polynomial_decay", "constant_sparsity"]
