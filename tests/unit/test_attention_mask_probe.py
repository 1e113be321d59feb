"""A Keras 3 model whose MultiHeadAttention takes its attention_mask from a model input (a
padding mask fed with the data, as BERT-style models do) failed every job at load, as
INTERNAL: "the tf_keras translation of the Keras 3 model is not the same model". The probe
batch fed the mask input standard-normal floats, which tf_keras weighs ((1 - m) * -1e9) and
Keras 3 casts to bool; on 0/1 masks the two agree exactly."""

from __future__ import annotations

import numpy as np


def test_a_keras3_model_with_an_attention_mask_input_loads(tmp_path):
    import keras

    from pruning_worker import safe_load

    L = keras.layers
    q = keras.Input((5, 8), name="q")
    m = keras.Input((5, 5), name="mask")
    x = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(q, q, attention_mask=m)
    model = keras.Model([q, m], L.Dense(2, name="out")(L.GlobalAveragePooling1D()(x)))
    model.save(tmp_path / "m.keras")
    loaded = safe_load.load(tmp_path / "m.keras", tmp_path, 1 << 30)
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(3, 5, 8)).astype("float32"), (rng.random((3, 5, 5)) > 0.3).astype("float32")]
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), np.asarray(model(x)), atol=1e-5)


def test_a_tf_keras_model_with_an_attention_mask_input_reads_back_as_keras3(tmp_path):
    """The same probe checks a structured job's Keras 3 read-back."""
    import tf_keras as keras

    from pruning_worker.export import keras3_twin

    L = keras.layers
    q = keras.Input((5, 8), name="q")
    c = keras.Input((3, 6), name="c")
    m = keras.Input((5, 3), name="m")
    a = L.MultiHeadAttention(num_heads=2, key_dim=3, name="cross")(q, c, attention_mask=m)
    model = keras.Model([q, c, m], L.Dense(2, name="out")(L.GlobalAveragePooling1D()(a)))
    twin, diff = keras3_twin(model, None, tmp_path)
    assert diff < 1e-5
