"""inputs.as_tensors: a job's training and test inputs converted once, as Keras converts an
array at each fit, predict and evaluate (floating arrays in floatx, others as they are), in
host memory, and the same figures from Keras either way."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pruning_worker.inputs import as_tensors


def test_arrays_become_host_tensors_as_keras_makes_them():
    x = np.arange(24, dtype=np.float64).reshape(4, 6)
    ids = np.arange(8, dtype=np.int32).reshape(4, 2)
    one = as_tensors(x)
    assert isinstance(one, tf.Tensor) and one.dtype == tf.float32 and "CPU" in one.device
    named = as_tensors({"pixels": x, "ids": ids})
    assert named["pixels"].dtype == tf.float32 and named["ids"].dtype == tf.int32
    listed = as_tensors([x, ids])
    assert [t.dtype for t in listed] == [tf.float32, tf.int32]
    assert np.array_equal(listed[0].numpy(), x.astype(np.float32))


def test_keras_gives_the_same_figures_from_tensors_as_from_arrays():
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6), dtype=np.float32), rng.integers(0, 3, 64)

    def trained(inputs):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.layers.InputLayer(input_shape=(6,)), keras.layers.Dense(3)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
        history = model.fit(inputs, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0).history
        return history, model.evaluate(inputs, y, batch_size=8, verbose=0), model.predict(inputs, verbose=0)

    (h1, e1, p1), (h2, e2, p2) = trained(x), trained(as_tensors(x))
    assert h1 == h2 and e1 == e2 and np.array_equal(p1, p2)


def test_fine_tuning_splits_on_the_host_as_keras_would(monkeypatch):
    """train.fine_tune makes Keras' validation split itself, under a host device (a GPU would
    hold the whole training split otherwise), with the same history as fit's own split."""
    from tf_keras.src.engine import data_adapter

    from pruning.v1 import pruning_pb2 as pb
    from pruning_worker import train

    rng = np.random.default_rng(1)
    x, y = rng.random((80, 6), dtype=np.float32), rng.integers(0, 3, 80)
    devices: list[str] = []
    split = data_adapter.train_validation_split

    def watched(arrays, validation_split):
        out = split(arrays, validation_split)
        devices.extend(t.device for t in tf.nest.flatten(out) if isinstance(t, tf.Tensor))
        return out

    def model():
        keras.utils.set_random_seed(5)
        m = keras.Sequential([keras.layers.InputLayer(input_shape=(6,)), keras.layers.Dense(3)])
        m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
        return m

    keras_own = model()
    expected = keras_own.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0).history
    monkeypatch.setattr(data_adapter, "train_validation_split", watched)
    ours = model()
    history = keras.callbacks.History()
    train.fine_tune(ours, as_tensors(x), y, pb.TrainingSpec(epochs=2, batch_size=8, validation_split=0.25), [history])
    assert history.history == expected
    assert devices and all("CPU" in d for d in devices)
