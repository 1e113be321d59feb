"""The recipe through the real service: the keep-accuracy recipe meets its target where the
guide's plain recipe misses it (and that job fails rather than succeed), the result carries the
recipe and the history, and a broken run never SUCCEEDS: a NaN learning rate is refused at
CreateJob; NaN data, a diverging loss and a missed target sparsity each fail the job."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import JobFailed, job_spec, polynomial_decay
from pruning_core import recipe

pytestmark = pytest.mark.integration


def _ids(client, files, data=None):
    return client.upload_model(files["keras"]).id, client.upload_dataset(data or files["data"]).id


def _spec(model, data, **kwargs):
    # 1024 training samples, a tenth for validation, batch 64: 15 steps an epoch.
    # The report (latency, plots) is test_report.py's.
    options = dict(schedule=polynomial_decay(0.2, 0.8, power=1), epochs=10, batch_size=64, seed=3, report=False)
    options.update(kwargs)
    return job_spec(model, dataset=data, **options)


def test_plain_recipe_misses_the_target_and_fails_where_keep_accuracy_meets_it(client, worker, files):
    model, data = _ids(client, files)
    # Plain: the schedule runs to the last step (149) with the masks updated every 100 steps,
    # so the last update (step 100) leaves the kernels far short of 0.8.
    plain = _spec(model, data, recipe="plain", schedule=polynomial_decay(0.2, 0.8, power=1, frequency=100))
    job = client.submit(plain)
    with pytest.raises(JobFailed):
        job.result(timeout=300)
    failed = client.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=client._metadata)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "sparse" in failed.error.message and "\n" not in failed.error.message

    result = client.submit(_spec(model, data)).result(timeout=300).raw
    r = result.recipe
    assert r.recipe == pb.RECIPE_KEEP_ACCURACY and r.name == "keep_accuracy"
    assert (r.schedule_end_step - r.schedule_begin_step) % r.schedule_frequency == 0
    assert r.schedule_end_step < 150 and r.learning_rate_decay
    assert r.learning_rate == pytest.approx(recipe.DEFAULT_LEARNING_RATES["adam"] * recipe.FINE_TUNE_LR_FACTOR)
    assert r.distillation and r.distillation_alpha == 0.5 and r.distillation_temperature == 4.0
    assert result.pruned_kernel_sparsity == pytest.approx(0.8, abs=0.01)
    # Small layers stay denser (the recipe's split) and the large one makes up for them.
    pruned = [layer for layer in result.layers if layer.pruned]
    assert all(abs(layer.sparsity - layer.target_sparsity) <= 0.01 for layer in pruned)
    assert {layer.name: layer.target_sparsity for layer in pruned if layer.target_sparsity < 0.8} == {
        "conv": pytest.approx(0.5),
        "logits": pytest.approx(0.5),
    }
    # The history: one entry per epoch run, the schedule reaching 0.8, the rate decaying.
    assert len(result.history) == r.epochs_run and 1 <= r.best_epoch <= r.epochs_run <= 10
    assert [e.epoch for e in result.history] == list(range(1, r.epochs_run + 1))
    assert result.history[-1].sparsity == pytest.approx(0.8)
    assert result.history[-1].learning_rate < result.history[0].learning_rate
    assert all(e.HasField("val_accuracy") and math.isfinite(e.loss) for e in result.history)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_learning_rate_is_refused_at_create_job(client, files, value):
    model, data = _ids(client, files)
    spec = _spec(model, data, learning_rate=0.001)
    spec.training.learning_rate = value
    before = len(list(client.list_jobs()))
    with pytest.raises(grpc.RpcError) as error:
        client.stub.CreateJob(pb.CreateJobRequest(spec=spec), metadata=client._metadata)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.training.learning_rate" in error.value.details()
    assert len(list(client.list_jobs())) == before


def _dataset_like(files, tmp_path, change):
    arrays = dict(np.load(files["data"]))
    change(arrays)
    path = tmp_path / "changed.npz"
    np.savez(path, **arrays)
    return path


def test_nan_in_the_data_fails_the_job_before_training(client, worker, files, tmp_path):
    def poison(arrays):
        arrays["x_train"][5, 2, 3] = np.nan

    model, data = _ids(client, files, _dataset_like(files, tmp_path, poison))
    job = client.submit(_spec(model, data, epochs=1))
    with pytest.raises(JobFailed):
        job.result(timeout=300)
    failed = client.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=client._metadata)
    assert failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "x_train" in failed.error.message and "NaN" in failed.error.message


def test_a_diverging_loss_fails_the_job(client, worker, files, tmp_path):
    def blow_up(arrays):
        arrays["x_train"] *= np.float32(3e37)  # finite, but the logits and the loss overflow

    model, data = _ids(client, files, _dataset_like(files, tmp_path, blow_up))
    job = client.submit(_spec(model, data, epochs=1, learning_rate=1.0))
    with pytest.raises(JobFailed):
        job.result(timeout=300)
    failed = client.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=client._metadata)
    assert failed.state == pb.JOB_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], failed.error.message
    assert "diverged" in failed.error.message


def test_a_softmax_output_under_a_loss_from_logits_is_warned_of(client, worker, files, tmp_path):
    """Nothing fails (it learns, slowly and badly), so the job's log says it."""
    from models import small_model

    model = client.upload_model(small_model(tmp_path / "softmax.keras", activation="softmax")).id
    spec = _spec(model, client.upload_dataset(files["data"]).id, epochs=1, max_train_samples=256)
    planned = client.validate(spec).warnings  # the dry run says it first
    assert len(planned) == 1 and planned[0].startswith("output 'logits' ends in softmax"), planned
    job = client.submit(spec)
    job.result(timeout=300)
    warnings = [e.log.message for e in client.watch_events(job.id) if e.log.level == "WARNING"]
    assert any(
        "output 'logits' ends in softmax, but its loss sparse_categorical_crossentropy_from_logits takes logits" in w
        and w.endswith("give the loss sparse_categorical_crossentropy")
        for w in warnings
    ), warnings
    assert planned[0] in warnings  # the same words


def test_a_sensitivity_scan_splits_the_target_over_the_layers(client, worker, files):
    model, data = _ids(client, files)
    job = client.submit(_spec(model, data, epochs=3, sensitivity_scan=True))
    result = job.result(timeout=300).raw
    pruned = [layer for layer in result.layers if layer.pruned]
    targets = {layer.name: layer.target_sparsity for layer in pruned}
    assert len(set(targets.values())) > 1, targets  # not one sparsity for all
    weights = sum(layer.weights for layer in pruned)
    assert sum(layer.target_sparsity * layer.weights for layer in pruned) / weights == pytest.approx(0.8, abs=0.005)
    assert result.pruned_kernel_sparsity == pytest.approx(0.8, abs=0.01)
    assert all(abs(layer.sparsity - layer.target_sparsity) <= max(0.01, 1 / layer.weights) for layer in pruned)
    logs = [e.log.message for e in client.watch_events(job.id) if e.WhichOneof("kind") == "log"]
    assert any(m.startswith("sensitivity scan: ") for m in logs)
