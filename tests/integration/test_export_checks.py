"""A model an asked-for export cannot take fails its job before fine-tuning, as the model's
fault (INVALID_ARGUMENT naming spec.export.formats), not after it as INTERNAL with the
converter's raw text and the worker's paths."""

from __future__ import annotations

import numpy as np
import pytest

from pruning_client import JobFailed, constant_sparsity, job_spec

pytestmark = pytest.mark.integration


def _spec(client, tmp_path, sample_shape, classes, **options):
    """A job on the model saved at ``tmp_path / "m.keras"`` and random data of that shape."""
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz",
        x_train=rng.normal(size=(64, *sample_shape)).astype("float32"),
        y_train=rng.integers(0, classes, 64),
        x_test=rng.normal(size=(16, *sample_shape)).astype("float32"),
        y_test=rng.integers(0, classes, 16),
    )
    return job_spec(
        client.upload_model(tmp_path / "m.keras").id,
        dataset=client.upload_dataset(tmp_path / "data.npz").id,
        schedule=constant_sparsity(0.5, frequency=1),
        epochs=1,
        batch_size=16,
        report=False,
        **options,
    )


def test_a_model_tflite_cannot_take_fails_before_fine_tuning_naming_the_format(client, worker, tmp_path):
    import keras

    layers = keras.layers
    stack = [keras.Input((6, 6, 6, 1)), layers.Conv3D(4, 3, activation="relu"), layers.MaxPooling3D(2)]
    model = keras.Sequential([*stack, layers.Flatten(), layers.Dense(4, name="logits")], name="conv3d_pool")
    model.save(tmp_path / "m.keras")
    spec = _spec(client, tmp_path, (6, 6, 6, 1), 4, exports=("keras", "tflite"))
    job = client.submit(spec)
    with pytest.raises(JobFailed) as failed:
        job.result(timeout=300)
    error = failed.value.job.error
    assert failed.value.job_code == error.code == 3  # INVALID_ARGUMENT: the model's, not the service's
    assert error.message.startswith("spec.export.formats: tflite: the model does not convert to TFLite")
    assert "MaxPool3D" in error.message and "/work" not in error.message and "celery" not in error.message
    phases = {e.progress.phase for e in job.watch(after_event_id="") if e.WhichOneof("kind") == "progress"}
    assert "fine_tune" not in phases


def test_a_tf_keras_model_keras_3_reads_differently_is_not_handed_back_as_keras_3(client, worker, tmp_path):
    """hard_sigmoid is 0.2x + 0.5 in tf_keras and relu6(x + 3) / 6 in Keras 3: the model came
    back as Keras 3 computing another function, and the job SUCCEEDED."""
    import tf_keras as keras

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(16, activation="hard_sigmoid", name="gate")(inputs)
    keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden)).save(tmp_path / "m.keras")
    spec = _spec(client, tmp_path, (4,), 3, keras_version=3)
    job = client.submit(spec)
    with pytest.raises(JobFailed) as failed:
        job.result(timeout=300)
    assert failed.value.job_code == 3
    assert failed.value.job.error.message.startswith(
        "spec.export.keras_version: the model read back as Keras 3 computes something else"
    )
    phases = {e.progress.phase for e in job.watch(after_event_id="") if e.WhichOneof("kind") == "progress"}
    assert "fine_tune" not in phases
    spec.export.keras_version = 2  # as it came: fine
    assert client.submit(spec).result(timeout=300).raw.keras_version_out == 2
