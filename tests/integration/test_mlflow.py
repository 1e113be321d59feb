"""A succeeded job is logged to MLflow (params, metrics, the pruned model) by the real worker;
an MLflow failure is a WARNING event on the job, never a failed job."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator

import pytest

from conftest import ServerThread, settings_for, start_worker, stop_worker
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, constant_sparsity, job_spec

pytestmark = pytest.mark.integration
EXPERIMENT = "pruning-test"


@pytest.fixture(scope="module")
def tracking(env, tmp_path_factory) -> Iterator[tuple[Client, str]]:
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = (tmp / "mlruns").as_uri()
    own = {**env, "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-mlflow"}
    server = ServerThread(settings_for(own))
    worker_env = {
        **own,
        "PRUNING_MLFLOW_TRACKING_URI": uri,
        "PRUNING_MLFLOW_EXPERIMENT": EXPERIMENT,
        "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 keeps the file store for those who ask
    }
    worker = start_worker(worker_env, tmp / "worker.log")
    try:
        with Client(server.target, timeout=30) as client, pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the test's own MlflowClient
            yield client, uri
    finally:
        stop_worker(worker)
        server.stop()


def run_job(client: Client, files: dict) -> tuple[pb.Job, list[pb.JobEvent]]:
    model = client.upload_model(files["keras"])
    data = client.upload_dataset(files["data"])
    spec = job_spec(
        model.id, dataset=data.id, schedule=constant_sparsity(0.5, frequency=5), epochs=1, batch_size=64, report=False
    )
    job = client.submit(spec, labels={"team": "vision"})
    job.result(timeout=120)
    return job.status(), list(client.watch_events(job.id))


def logs(events: list[pb.JobEvent]) -> list[pb.LogLine]:
    return [e.log for e in events if e.WhichOneof("kind") == "log"]


def test_a_succeeded_job_is_an_mlflow_run(tracking, files, tmp_path):
    from mlflow.tracking import MlflowClient

    client, uri = tracking
    job, events = run_job(client, files)
    assert job.state == pb.JOB_STATE_SUCCEEDED
    assert any(line.message.startswith("MLflow run ") for line in logs(events))

    mlflow = MlflowClient(tracking_uri=uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    (run,) = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`pruning.job_id` = '{job.id}'")
    assert run.info.status == "FINISHED" and run.info.run_name == f"prune-{job.id}"
    assert run.data.tags["label.team"] == "vision" and run.data.tags["pruning.attempt"] == "1"
    params = run.data.params
    assert params["model_id"] == job.spec.model_id and params["training.epochs"] == "1"
    assert params["training.batch_size"] == "64" and params["export.formats"] == "EXPORT_FORMAT_KERAS"
    assert float(params["pruning.schedule.constant_sparsity.target_sparsity"]) == 0.5
    result, metrics = job.result, run.data.metrics
    assert {"compression_ratio", "fine_tune_seconds", "overall_sparsity", "size_before_gzip_bytes"} <= metrics.keys()
    assert metrics["pruned_accuracy"] == pytest.approx(result.pruned.accuracy)
    assert metrics["baseline_accuracy"] == pytest.approx(result.baseline.accuracy)
    assert metrics["pruned_loss"] == pytest.approx(result.pruned.loss)
    assert metrics["pruned_kernel_sparsity"] == pytest.approx(result.pruned_kernel_sparsity)
    assert metrics["size_after_gzip_bytes"] == result.size_after.gzip_bytes > 0

    (artifact,) = mlflow.list_artifacts(run.info.run_id, "model")
    local = pathlib.Path(mlflow.download_artifacts(run.info.run_id, artifact.path, str(tmp_path)))
    assert hashlib.sha256(local.read_bytes()).hexdigest() == result.artifacts[0].sha256


def test_an_mlflow_failure_is_a_warning_not_a_failed_job(tracking, files):
    from mlflow.tracking import MlflowClient

    client, uri = tracking
    mlflow = MlflowClient(tracking_uri=uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT) or mlflow.get_experiment(
        mlflow.create_experiment(EXPERIMENT)
    )
    mlflow.delete_experiment(experiment.experiment_id)  # no run can be created in a deleted experiment
    try:
        job, events = run_job(client, files)
    finally:
        mlflow.restore_experiment(experiment.experiment_id)
    assert job.state == pb.JOB_STATE_SUCCEEDED and job.result.pruned_kernel_sparsity > 0.4
    warnings = [line.message for line in logs(events) if line.level == "WARNING"]
    assert any(message.startswith(f"MLflow: could not log the run to {uri}") for message in warnings), warnings
