"""A value the model cannot take in the training data (a token id past the Embedding) fails a
job of the default recipe, which distills, as INVALID_ARGUMENT naming the cause, before any
step runs (on a GPU the lookup would give zeros and nothing would fail). Real server, worker,
TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from pruning_client import JobFailed, job_spec

pytestmark = pytest.mark.integration


def test_a_token_past_the_embedding_in_the_training_data_is_an_input_error(client, worker, tmp_path):
    import keras

    inputs = keras.Input((5,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(10, 4, name="emb")(inputs)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(2, name="out")(h)
    path = tmp_path / "text.keras"
    keras.Model(inputs, outputs, name="text").save(path)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (256, 5)).astype("int32")
    x[3, 0] = 12  # past the Embedding's 10 rows, in the training split only
    y = rng.integers(0, 2, 256).astype("int64")
    data = tmp_path / "text.npz"
    np.savez(data, x_train=x[:192], y_train=y[:192], x_test=x[192:], y_test=y[192:])
    model = client.upload_model(path)
    # the default recipe (keep_accuracy) distills from the model as uploaded
    spec = job_spec(model.id, dataset=client.upload_dataset(data).id, epochs=1, batch_size=32, report=False)
    job = client.submit(spec)
    with pytest.raises(JobFailed) as failed:
        job.result(timeout=600)
    error = failed.value.job.error
    assert error.code == 3, error  # INVALID_ARGUMENT: the data's fault, not INTERNAL
    assert "x_train holds ids in [0, 12] (the first outside in sample 3)" in error.message, error.message
    assert "Embedding 'emb' has input_dim 10" in error.message, error.message
