"""Preflight: UploadModel answers with the model's summary, and CreateJob with validate_only
checks spec, model and dataset together and answers with the plan, in seconds, queueing
nothing. Whatever can be known before training is refused there."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from pruning.v1 import pruning_pb2 as pb
from pruning_client import InvalidArgument, job_spec, polynomial_decay


def _validate(client, spec):
    started = time.monotonic()
    try:
        job = client.stub.CreateJob(pb.CreateJobRequest(spec=spec, validate_only=True), metadata=client._metadata)
    finally:
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"validate_only took {elapsed:.2f} s"
    return job


def _violations(error: grpc.RpcError) -> dict[str, str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    status = rpc_status.from_call(error)
    found = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        detail.Unpack(bad)
        found |= {v.field: v.description for v in bad.field_violations}
    return found


def _job_count(client) -> int:
    return len(list(client.list_jobs()))


@pytest.fixture()
def ids(client, files):
    return {"model": client.upload_model(files["keras"]).id, "data": client.upload_dataset(files["data"]).id}


def test_upload_answers_with_the_summary(client, files):
    artifact = client.upload_model(files["keras"])
    summary = artifact.raw.model if hasattr(artifact, "raw") else artifact.model
    assert summary.keras_version == 2
    assert [list(i.shape) for i in summary.inputs] == [[8, 8]]
    assert [list(o.shape) for o in summary.outputs] == [[4]]
    layers = {layer.name: layer for layer in summary.layers}
    assert layers["conv"].params == 3 * 3 * 1 * 4 + 4 and layers["hidden"].params == 6 * 6 * 4 * 32 + 32
    assert layers["logits"].params == 32 * 4 + 4 and layers["logits"].prunable
    assert not layers["flatten"].prunable
    assert summary.total_params == sum(layer.params for layer in summary.layers)


def test_validate_only_answers_with_the_plan_and_queues_nothing(client, ids):
    before = _job_count(client)
    spec = job_spec(ids["model"], dataset=ids["data"], schedule=polynomial_decay(0.5, 0.8), epochs=2, batch_size=64)
    job = _validate(client, spec)
    assert job.id == "" and job.state == pb.JOB_STATE_UNSPECIFIED
    plan = job.plan
    # The test dataset: 1024 training samples, validation split 0.1 by default.
    assert plan.validation_samples == 1024 - int(1024 * 0.9) and plan.train_samples == int(1024 * 0.9)
    assert plan.steps_per_epoch == -(-int(1024 * 0.9) // 64) and plan.total_steps == 2 * plan.steps_per_epoch
    # The keep-accuracy recipe: the final sparsity on a mask update about half of the way.
    decay = plan.spec.pruning.schedule.polynomial_decay
    assert plan.schedule_end_step == decay.end_step < plan.total_steps
    assert (decay.end_step - decay.begin_step) % decay.frequency == 0
    assert 0.35 * plan.total_steps <= plan.schedule_end_step <= 0.5 * plan.total_steps
    assert plan.spec.training.recipe == pb.RECIPE_KEEP_ACCURACY and plan.spec.training.learning_rate > 0
    assert {layer.name for layer in plan.layers} == {"conv", "hidden", "logits"}
    # The recipe's split: the layers under 5% of the weights at 0.5, the rest making up 0.8 overall.
    finals = {layer.name: layer.final_sparsity for layer in plan.layers}
    assert finals["conv"] == finals["logits"] == pytest.approx(0.5) and finals["hidden"] > 0.8
    weights = {layer.name: layer.weights for layer in plan.layers}
    overall = sum(finals[n] * weights[n] for n in finals) / sum(weights.values())
    assert overall == pytest.approx(0.8)
    assert dict(plan.spec.pruning.layer_sparsity) == pytest.approx(finals)
    assert plan.estimated_seconds > 0 and "heuristic" in plan.estimate_basis
    assert plan.spec.training.epochs == 2 and plan.spec.training.validation_split == pytest.approx(0.1)
    assert _job_count(client) == before


def test_validate_only_catches_a_dataset_shape_mismatch(client, files, ids):
    data = client.upload_dataset(files["wrong_shape"]).id
    with pytest.raises(grpc.RpcError) as error:
        _validate(client, job_spec(ids["model"], dataset=data))
    assert "spec.dataset.artifact_id" in _violations(error.value)


def test_validate_only_catches_labels_past_the_output_units(client, files, ids, tmp_path):
    with np.load(files["data"]) as data:
        arrays = dict(data)
    arrays["y_test"] = arrays["y_test"] + 3  # up to 6 for a 4-way output
    np.savez(tmp_path / "bad.npz", **arrays)
    before = _job_count(client)
    bad = client.upload_dataset(tmp_path / "bad.npz").id
    with pytest.raises(grpc.RpcError) as error:
        _validate(client, job_spec(ids["model"], dataset=bad))
    assert "4 output units" in _violations(error.value)["spec.dataset.artifact_id"]
    with pytest.raises(grpc.RpcError) as error:  # and a plain CreateJob refuses it as well
        client.stub.CreateJob(pb.CreateJobRequest(spec=job_spec(ids["model"], dataset=bad)), metadata=client._metadata)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _job_count(client) == before


def test_validate_only_catches_unknown_layer_names(client, ids):
    with pytest.raises(grpc.RpcError) as error:
        _validate(client, job_spec(ids["model"], dataset=ids["data"], include_layers=("hidden", "nope")))
    assert "nope" in _violations(error.value)["spec.pruning.layers.include_names"]


def test_validate_only_catches_a_schedule_past_the_last_step(client, ids):
    spec = job_spec(ids["model"], dataset=ids["data"], schedule=polynomial_decay(0.5, 0.8), epochs=1, batch_size=64)
    spec.pruning.schedule.polynomial_decay.end_step = 1000  # 15 steps in all
    with pytest.raises(grpc.RpcError) as error:
        _validate(client, spec)
    message = _violations(error.value)["spec.pruning.schedule.polynomial_decay.end_step"]
    assert "after the last fine-tuning step 15" in message


def _keras3_with(layer_factory, path):
    import keras

    inputs = keras.Input((8,))
    keras.Model(inputs, keras.layers.Dense(2)(layer_factory()(inputs))).save(path)
    return path


def _custom_layer():
    import keras

    @keras.saving.register_keras_serializable(package="user")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    return Twice(name="twice")


@pytest.mark.parametrize(
    ("factory", "name", "cls"),
    [
        (lambda: __import__("keras").layers.RMSNormalization(name="noisy"), "noisy", "RMSNormalization"),
        (_custom_layer, "twice", "Twice"),
    ],
    ids=["layer-outside-the-bridge", "custom-subclass"],
)
def test_upload_refuses_a_keras3_layer_it_cannot_convert_by_name(client, tmp_path, factory, name, cls):
    before = _job_count(client)
    with pytest.raises(InvalidArgument) as error:
        client.upload_model(_keras3_with(factory, tmp_path / "m.keras"))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert any(name in text and cls in text for _, text in error.value.field_violations), error.value
    assert _job_count(client) == before
