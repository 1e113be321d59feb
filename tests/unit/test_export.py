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


def test_int8_export_of_a_two_input_model_calibrates_each_input_with_its_own_data(tmp_path):
    """The converted model lists its inputs in another order than Keras: the calibration
    samples go by name (a conv input fed the tabular array failed the conversion)."""
    import tensorflow as tf
    import tf_keras as keras

    from pruning_worker.export import export

    image, tabular = keras.Input((8, 8, 3), name="image"), keras.Input((4,), name="tabular")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    out = keras.layers.Dense(3)(keras.layers.Concatenate()([x, keras.layers.Dense(4)(tabular)]))
    model = keras.Model({"image": image, "tabular": tabular}, out)
    rng = np.random.default_rng(0)
    data = {"image": rng.random((30, 8, 8, 3), np.float32), "tabular": rng.random((30, 4), np.float32)}
    path = export(model, pb.EXPORT_FORMAT_TFLITE_INT8, tmp_path / "m", data)
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    expected = model.predict(data, verbose=0)
    for i in range(3):
        out = next(iter(runner(**{k: v[i : i + 1] for k, v in data.items()}).values()))
        assert np.abs(out - expected[i : i + 1]).max() < 0.1


def test_structured_latency_of_a_model_tflite_cannot_convert_has_tensorflow_figures_and_a_warning():
    import tensorflow as tf
    import tf_keras as keras

    from pruning_worker.structured.step import BATCHES, fill_latency

    inputs = keras.Input((4, 4))
    det = keras.layers.Lambda(lambda t: tf.expand_dims(tf.linalg.det(t), -1))(inputs)  # no TFLite kernel
    model = keras.Model(inputs, keras.layers.Dense(2)(det))
    warnings: list[str] = []
    result = pb.StructuredResult()
    fill_latency(result, model, model, "CPU", 3, warnings.append)
    assert [(f.runtime, f.batch_size) for f in result.latency] == [("tf", b) for b in BATCHES]
    assert all(f.before_ms > 0 and f.after_ms > 0 for f in result.latency)
    assert len(warnings) == 1 and "MatrixDeterminant" in warnings[0] and "does not convert" in warnings[0]
