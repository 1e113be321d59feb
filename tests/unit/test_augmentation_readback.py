"""A structured job on a Keras 3 model with augmentation layers at its front (RandomFlip,
RandomRotation, as Keras' transfer-learning guide builds it) failed after its fine-tuning with
"spec.pruning.structured: Keras 3 cannot read this model back (Unrecognized keyword arguments
passed to RandomFlip: {'rng_type': 'stateful'})": the tf_keras model was read back by Keras 3's
loader of Keras 2 files with tf_keras's rng_type, an option Keras 3's layers do not take."""

from __future__ import annotations

import numpy as np


def test_a_keras3_model_with_augmentation_reads_back_from_tf_keras(tmp_path):
    import keras

    from pruning_worker import bridge
    from pruning_worker.export import keras3_twin

    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.RandomFlip("horizontal")(inputs)
    x = L.RandomRotation(0.1)(x)
    x = L.Conv2D(8, 3, activation="relu")(x)
    model3 = keras.Model(inputs, L.Dense(4)(L.GlobalAveragePooling2D()(x)))
    model2 = bridge.to_tf_keras(model3, flatten_nested=True)
    twin, diff = keras3_twin(model2, None, tmp_path, "spec.pruning.structured")  # as a structured job reads it back
    assert diff <= 1e-5
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(twin(x, training=False)), np.asarray(model3(x, training=False)), atol=1e-5)
