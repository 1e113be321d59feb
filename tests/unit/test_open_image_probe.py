"""A Keras 3 model that leaves its image size open (``MobileNetV2(input_shape=(None, None, 3),
include_top=False, pooling="avg")`` under a new head, as the transfer-learning guides build it)
failed its job at load as INTERNAL "the tf_keras translation of the Keras 3 model is not the
same model: outputs differ by inf", though the translation is exact: the bridge's probe batch
gave the open height and width 8, which the backbone's stride of 32 brings to an empty feature
map (NaN outputs; with the worker's oneDNN kernels, whatever memory held, differently in the
two models and from run to run). The probe now takes the open sizes from the job's data."""

from __future__ import annotations

import numpy as np


def _open_image_model(path):
    import keras

    base = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), include_top=False, weights=None, alpha=0.35, pooling="avg"
    )
    model = keras.Model(base.input, keras.layers.Dense(10, activation="softmax", name="head")(base.output))
    model.save(path)
    return model


def test_the_probe_takes_open_sizes_from_the_data(tmp_path):
    from pruning_worker import bridge

    model = _open_image_model(tmp_path / "m.keras")
    x = np.zeros((4, 32, 32, 3), "float32")
    probe = bridge.make_probe(model, data=x)
    assert probe[0].shape == (2, 32, 32, 3)
    assert np.isfinite(np.asarray(model(probe[0], training=False))).all()
    assert bridge.make_probe(model, data={model.inputs[0]._keras_history[0].name: x})[0].shape == (2, 32, 32, 3)
    assert bridge.make_probe(model)[0].shape == (2, 8, 8, 3)  # no data: as before


def test_an_open_image_size_keras3_model_loads_with_its_data(tmp_path):
    from pruning_worker import safe_load

    model = _open_image_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    loaded = safe_load.load(tmp_path / "m.keras", tmp_path, 1 << 30, x)
    assert loaded.conversion_diff <= 1e-5
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), np.asarray(model(x, training=False)), atol=1e-5)
