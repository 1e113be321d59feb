"""Logs a succeeded job to MLflow (``pip install pruning-worker[mlflow]``).

With ``PRUNING_MLFLOW_TRACKING_URI`` set, the worker records one run per succeeded job in the
experiment ``PRUNING_MLFLOW_EXPERIMENT``: the spec flattened into params, the result's
figures as metrics, the pruned model (the first export) as an artifact, and the job id,
attempt and labels as tags. MLflow is a side channel: a failure becomes a WARNING event on the
job and never fails it.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Any

from google.protobuf import json_format

from pruning.v1 import pruning_pb2 as pb
from pruning_core.settings import Settings

log = logging.getLogger(__name__)
MAX_PARAM_CHARS = 500
# A tracking server that is down should cost the job seconds, not MLflow's default minutes of retries.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys; lists joined with commas; strings cut to MAX_PARAM_CHARS."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        if any(isinstance(item, (dict, list)) for item in value):
            nested: dict[str, str] = {}
            for i, item in enumerate(value):
                nested.update(flatten(item, f"{prefix}.{i}"))
            return nested
        value = ",".join(str(item) for item in value)
    return {prefix: str(value)[:MAX_PARAM_CHARS]}


def params(spec: pb.JobSpec) -> dict[str, str]:
    as_dict = json_format.MessageToDict(
        spec, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return flatten(as_dict)


def metrics(result: pb.PruneResult) -> dict[str, float]:
    # only the figures measured: no accuracy under a regression loss, no baseline when skipped
    present = {
        name: value
        for name, value, there in (
            ("baseline_accuracy", result.baseline.accuracy, result.baseline.HasField("accuracy")),
            ("pruned_accuracy", result.pruned.accuracy, result.pruned.HasField("accuracy")),
            ("accuracy_delta", result.accuracy_delta, result.HasField("accuracy_delta")),
            ("baseline_loss", result.baseline.loss, result.HasField("baseline")),
        )
        if there
    }
    figures = {
        **present,
        "pruned_loss": result.pruned.loss,
        "overall_sparsity": result.overall_sparsity,
        "pruned_kernel_sparsity": result.pruned_kernel_sparsity,
        "total_params": result.total_params,
        "nonzero_params": result.nonzero_params,
        "size_before_raw_bytes": result.size_before.raw_bytes,
        "size_before_gzip_bytes": result.size_before.gzip_bytes,
        "size_after_raw_bytes": result.size_after.raw_bytes,
        "size_after_gzip_bytes": result.size_after.gzip_bytes,
        "compression_ratio": result.compression_ratio,
        "fine_tune_seconds": result.fine_tune_seconds,
    }
    for layer in result.layers:
        if layer.pruned:
            figures[f"layer_sparsity.{layer.name}"] = layer.sparsity
    return {k: float(v) for k, v in figures.items()}


def log_run(settings: Settings, job: pb.Job, result: pb.PruneResult, model_file: pathlib.Path) -> str:
    """Records the run; returns its id. Raises whatever MLflow raises."""
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(settings.mlflow_experiment)
    tags = {"pruning.job_id": job.id, "pruning.attempt": str(job.attempt), "pruning.device": result.device}
    tags.update({f"label.{k}": v for k, v in job.labels.items()})
    run = client.create_run(experiment_id, run_name=f"prune-{job.id}", tags=tags)
    run_id: str = run.info.run_id
    try:
        now_ms = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now_ms, 0) for k, v in metrics(result).items()],
            params=[Param(k, v) for k, v in params(job.spec).items()],
            tags=[RunTag("mlflow.source.name", "pruning-worker")],
        )
        client.log_artifact(run_id, str(model_file), artifact_path="model")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def log_job(settings: Settings, job: pb.Job, result: pb.PruneResult, model_file: pathlib.Path, reporter: Any) -> None:
    """:func:`log_run`, turning any failure into a WARNING event on the job."""
    uri = settings.mlflow_tracking_uri
    try:
        run_id = log_run(settings, job, result, model_file)
    except ImportError:
        reporter.log(
            "MLflow tracking is set but mlflow is not installed (pip install pruning-worker[mlflow])", level="WARNING"
        )
        return
    except Exception as exc:
        log.warning("job %s: MLflow logging to %s failed", job.id, uri, exc_info=True)
        reporter.log(f"MLflow: could not log the run to {uri}: {type(exc).__name__}: {exc}"[:2000], level="WARNING")
        return
    reporter.log(f"MLflow run {run_id} in experiment {settings.mlflow_experiment!r} at {uri}")
