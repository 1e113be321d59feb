"""Kubeflow Pipelines (v2) pipeline: prune a Keras model through the pruning service.

The ``prune`` component uses the Python SDK: it uploads the model artifact, submits a job
(idempotency key = the pipeline run's id, so a retried task gets the same job), waits for the
result, downloads the pruned model into its output artifact (a directory holding the .keras
file) and logs the figures as metrics. An API key, if the server wants one, comes from the
PRUNING_API_KEY environment variable (e.g. a Secret mounted with kfp-kubernetes).

The component image needs the client package (``pip install ./client``; grpcio and protobuf,
no TensorFlow): build one, or use the server image (the Dockerfile's ``server`` target), which
has it, and set PRUNING_CLIENT_IMAGE before compiling. Compile with
``python examples/kfp_pipeline.py pruning_pipeline.yaml`` (needs ``pip install kfp``), then
upload the YAML to Kubeflow Pipelines and run it with ``model_uri`` pointing at a .keras file.

kfp 2.17 pins protobuf < 7 and the client needs protobuf 7, so pip refuses both in one
environment: compile in an environment of kfp alone (it does not import the client). To run
the component's function locally, install the client and then ``pip install --no-deps kfp``, as
the compiled component does inside its image.
"""

import os
import sys

from kfp import compiler, dsl

IMAGE = os.environ.get("PRUNING_CLIENT_IMAGE", "pruning-server:0.1.0")


@dsl.component(base_image=IMAGE)
def prune(
    model: dsl.Input[dsl.Model],
    pruned_model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    target: str,
    idempotency_key: str,
    dataset: str = "mnist",
    initial_sparsity: float = 0.5,
    final_sparsity: float = 0.8,
    epochs: int = 2,
    timeout_s: float = 6 * 3600,
) -> float:
    """Prunes ``model`` with the service at ``target``; returns the pruned model's accuracy
    (NaN under a regression loss, which has none: its test losses are logged instead)."""
    import os

    from pruning_client import Client, job_spec, polynomial_decay

    with Client(target, api_key=os.environ.get("PRUNING_API_KEY"), timeout=60) as client:
        uploaded = client.upload_model(model.path)
        spec = job_spec(
            uploaded.id, dataset=dataset, schedule=polynomial_decay(initial_sparsity, final_sparsity), epochs=epochs
        )
        job = client.submit(spec, labels={"kfp_run": idempotency_key}, idempotency_key=idempotency_key)
        result = job.result(timeout=timeout_s)  # raises JobFailed / JobCancelled / JobTimeout
        os.makedirs(pruned_model.path, exist_ok=True)  # the artifact is a directory with the model file
        path = job.download(pruned_model.path)

    pruned_model.metadata.update({"job_id": job.id, "file": os.path.basename(path), "final_sparsity": final_sparsity})
    for name in (
        "baseline_accuracy",
        "pruned_accuracy",
        "accuracy_delta",
        "baseline_loss",
        "pruned_loss",
        "overall_sparsity",
        "pruned_kernel_sparsity",
        "compression_ratio",
        "size_before_gzip",
        "size_after_gzip",
        "fine_tune_seconds",
    ):
        if (value := getattr(result, name)) is not None:  # the accuracies: None under a regression loss
            metrics.log_metric(name, float(value))
    return result.pruned_accuracy if result.pruned_accuracy is not None else float("nan")


@dsl.pipeline(name="prune-model", description="Prune a Keras model with the pruning service")
def pruning_pipeline(
    model_uri: str,
    target: str = "pruning-server.pruning.svc:50051",
    dataset: str = "mnist",
    final_sparsity: float = 0.8,
    epochs: int = 2,
):
    model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=False)
    prune(
        model=model.output,
        target=target,
        idempotency_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        dataset=dataset,
        final_sparsity=final_sparsity,
        epochs=epochs,
    ).set_retry(num_retries=2)


if __name__ == "__main__":
    compiler.Compiler().compile(pruning_pipeline, sys.argv[1] if len(sys.argv) > 1 else "pruning_pipeline.yaml")
