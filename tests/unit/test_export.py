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

    from pruning_worker.measure import latency_figures
    from pruning_worker.structured.step import BATCHES

    inputs = keras.Input((4, 4))
    det = keras.layers.Lambda(lambda t: tf.expand_dims(tf.linalg.det(t), -1))(inputs)  # no TFLite kernel
    model = keras.Model(inputs, keras.layers.Dense(2)(det))
    warnings: list[str] = []
    figures = latency_figures(model, model, "CPU", BATCHES, 3, warnings.append)
    assert [(f.runtime, f.batch_size) for f in figures] == [("tf", b) for b in BATCHES]
    assert all(f.before_ms > 0 and f.after_ms > 0 for f in figures)
    assert len(warnings) == 1 and "MatrixDeterminant" in warnings[0] and "does not convert" in warnings[0]


def test_a_tflite_exports_own_test_accuracy_is_measured_on_the_file(tmp_path):
    """The float export scores what the Keras model scores on the same samples; the int8
    export is measured too, not assumed (its figure is its own)."""
    import tf_keras as keras

    from pruning_worker.export import export
    from pruning_worker.measure import tflite_accuracy

    rng = np.random.default_rng(0)
    x = rng.random((600, 6), np.float32)
    y = (x[:, 0] + x[:, 1] > x[:, 2] + 0.5).astype(np.int64)  # a rule a Dense layer can learn partly
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.InputLayer(input_shape=(6,)), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=3, verbose=0)
    keras_accuracy = float(np.mean(model.predict(x, verbose=0).argmax(1) == y))

    float_file = export(model, pb.EXPORT_FORMAT_TFLITE, tmp_path / "f", x)
    accuracy, samples = tflite_accuracy(float_file, x, y)
    assert samples == 600 and abs(accuracy - keras_accuracy) <= 2 / 600  # float rounding at a boundary
    int8_file = export(model, pb.EXPORT_FORMAT_TFLITE_INT8, tmp_path / "q", x)
    accuracy8, samples8 = tflite_accuracy(int8_file, x, y, limit=500)
    assert samples8 == 500 and abs(accuracy8 - keras_accuracy) < 0.1

    assert tflite_accuracy(float_file, x, y.astype(np.float32)) == (accuracy, samples)  # integral floats
    assert tflite_accuracy(float_file, x, y[:, None]) == (accuracy, samples)  # (n, 1) labels
    assert tflite_accuracy(float_file, x, y + 0.5) is None  # not class labels
    one = keras.Sequential([keras.layers.InputLayer(input_shape=(6,)), keras.layers.Dense(1)])
    assert tflite_accuracy(export(one, pb.EXPORT_FORMAT_TFLITE, tmp_path / "one", x), x, y) is None


def test_a_keras_file_that_does_not_load_back_fails_naming_its_format(tmp_path):
    """The worker loads every .keras and .h5 export back before the job succeeds: Keras 3 wrote
    an .h5 of a masked functional model that its own loader refuses, and the job handed it over."""
    import keras

    from pruning_worker.errors import JobInputError
    from pruning_worker.export import load_export

    inputs = keras.Input((3,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4, mask_zero=True)(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(pooled)).save(tmp_path / "m.h5")
    with pytest.raises(
        JobInputError, match=r"^spec\.export\.formats: h5: the written file does not load back in Keras 3"
    ):
        load_export(tmp_path / "m.h5", 3, "h5")


def _tf_keras(kind):
    import tf_keras as keras

    layers = keras.layers
    inputs = keras.Input((4,))
    if kind == "hard_sigmoid":  # tf_keras: 0.2x + 0.5 clipped; Keras 3: relu6(x + 3) / 6
        return keras.Model(inputs, layers.Dense(3, activation="hard_sigmoid")(layers.Dense(8)(inputs)))
    if kind == "nested":
        inner_in = keras.Input((4,))
        block = keras.Model(inner_in, layers.Dense(8, activation="relu")(inner_in), name="block")
        return keras.Model(inputs, layers.Dense(3)(block(inputs)))
    return keras.Model(inputs, layers.Dense(3, activation="sigmoid")(layers.Dense(8)(inputs)))


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("hard_sigmoid", r"the model read back as Keras 3 computes something else \(outputs differ by"),
        ("nested", r"Keras 3 cannot read this model back \(.*disconnected"),
    ],
)
def test_a_tf_keras_model_keras_3_reads_wrong_or_not_at_all_fails_naming_the_field(tmp_path, kind, match):
    """A hard_sigmoid model came back as Keras 3 computing another function (outputs 0.19 off)
    and the job SUCCEEDED; a functional model holding a nested one failed INTERNAL."""
    import numpy as np

    from pruning_worker.errors import JobInputError
    from pruning_worker.export import keras3_twin

    model = _tf_keras(kind)
    model.set_weights([np.full(w.shape, 0.1, "float32") for w in model.get_weights()])  # unsaturated: the slopes show
    with pytest.raises(JobInputError, match=r"^spec\.export\.keras_version: " + match):
        keras3_twin(model, None, tmp_path)
    twin, diff = keras3_twin(_tf_keras("plain"), None, tmp_path)
    assert diff <= 1e-6 and len(twin.layers) == 3
