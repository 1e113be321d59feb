"""Exports of the worker: the int8 converter's calibration data."""

from __future__ import annotations

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb


@pytest.mark.parametrize("dtype", ["int8", "uint8", "float16", "float64"])
def test_int8_export_calibrates_with_data_of_any_numeric_dtype(tmp_path, dtype):
    import tensorflow as tf
    import tf_keras as keras

    from pruning_worker.export import export

    model = keras.Sequential([keras.layers.InputLayer(input_shape=(6,)), keras.layers.Dense(3)])
    x = np.random.default_rng(0).integers(0, 100, (20, 6)).astype(dtype)
    path = export(model, pb.EXPORT_FORMAT_TFLITE_INT8, tmp_path / "m", x)
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    assert interpreter.get_input_details()[0]["dtype"] == np.float32  # the model's, whatever the data's
