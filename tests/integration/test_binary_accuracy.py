"""Under a binary cross-entropy the reported accuracy is the binary accuracy: a
classifier of logits is thresholded at a logit of 0, not 0.5, and a multi-label classifier is
judged unit by unit, not by argmax. Real server, worker, TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from pruning_client import constant_sparsity, job_spec

pytestmark = pytest.mark.integration


def _keras3_binary_logit_model(path):
    """One Dense(1) of logits: logit = x[0]. Its true accuracy on labels x[0] > 0 is 1."""
    import keras

    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Dense(1, name="logit")(inputs)
    model = keras.Model(inputs, outputs, name="binary_logit")
    model.get_layer("logit").set_weights([np.array([[1.0], [0.0], [0.0], [0.0]], "float32"), np.zeros(1, "float32")])
    model.save(path)
    return path


def _pruned(client, model_path, x, y, loss: str, tmp_path):
    """A job on the first 512 samples (the rest the test split) pruned to 0.75 under ``loss``;
    its result and the downloaded model's outputs on the test split, from a fresh load."""
    import keras

    data = tmp_path / "data.npz"
    np.savez(data, x_train=x[:512], y_train=y[:512], x_test=x[512:], y_test=y[512:])
    spec = job_spec(
        client.upload_model(model_path).id,
        dataset=client.upload_dataset(data).id,
        schedule=constant_sparsity(0.75, frequency=1),
        loss=loss,
        epochs=1,
        batch_size=64,
        seed=1,
        report=False,
    )
    job = client.submit(spec)
    result = job.result(timeout=600)
    pruned = keras.saving.load_model(job.download(tmp_path / "pruned.keras"))
    return result, pruned.predict(x[512:], verbose=0)


def test_a_binary_classifier_of_logits_reports_its_real_accuracy(client, worker, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (768, 4)).astype("float32")  # every logit in (-0.5, 0.5)
    y = (x[:, 0] > 0).astype("float32")
    path = _keras3_binary_logit_model(tmp_path / "binary_logit.keras")
    result, outputs = _pruned(client, path, x, y, "binary_crossentropy_from_logits", tmp_path)
    # logit > 0 is probability > 0.5: the model as uploaded classifies every test sample right;
    # thresholding logits at 0.5 called those in (0, 0.5] class 0 (about half of them)
    assert result.baseline_accuracy == pytest.approx(1.0)
    logits = outputs[:, 0]
    assert result.pruned_accuracy == pytest.approx(float(np.mean((logits > 0) == (y[512:] > 0.5))), abs=1e-6)


def test_a_multi_label_classifier_reports_the_binary_accuracy_of_its_units(client, worker, tmp_path):
    """Two sigmoid units, labels x[0] > 0 and x[1] > 0: every unit of every sample right. Keras's
    "accuracy" compared argmaxes there (a sample labelled [0, 0] or [1, 1] counted against the
    larger of two right probabilities)."""
    import keras

    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, (768, 4)).astype("float32")
    y = (x[:, :2] > 0).astype("float32")
    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Dense(2, activation="sigmoid", name="labels")(inputs)
    model = keras.Model(inputs, outputs, name="multi_label")
    kernel = np.zeros((4, 2), "float32")
    kernel[0, 0] = kernel[1, 1] = 10.0
    model.get_layer("labels").set_weights([kernel, np.zeros(2, "float32")])
    model.save(tmp_path / "multi_label.keras")
    result, probabilities = _pruned(client, tmp_path / "multi_label.keras", x, y, "binary_crossentropy", tmp_path)
    assert result.baseline_accuracy == pytest.approx(1.0)
    assert result.pruned_accuracy == pytest.approx(float(np.mean((probabilities > 0.5) == (y[512:] > 0.5))), abs=1e-6)
