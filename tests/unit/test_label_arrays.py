"""Label arrays named after a model's outputs (``y_train.<output name>``): one per output of a
model of several, and, as the README's naming invites, the one array of a single-output model."""

from __future__ import annotations

import numpy as np

from pruning.v1 import pruning_pb2 as pb
from pruning_worker import datasets, inputs
from pruning_worker.evaluate import evaluate


def _save(path, **labels):
    x = {"x_train": np.random.default_rng(0).normal(size=(16, 3)).astype("f4"), "x_test": np.zeros((8, 3), "f4")}
    np.savez(path, **x, **labels)
    return path


def test_the_one_named_label_array_of_a_single_output_model_is_its_labels(tmp_path):
    import tf_keras

    path = _save(tmp_path / "d.npz", **{"y_train.out": np.arange(16) % 4, "y_test.out": np.arange(8) % 4})
    x_train, y_train, x_test, y_test = datasets.load_npz(path)
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4, name="out")])
    model.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    inputs.check(
        model, (x_train, y_train, x_test, y_test), pb.TrainingSpec(loss="sparse_categorical_crossentropy_from_logits")
    )
    metrics = evaluate(model, x_test, inputs.by_output(model, y_test), pb.TrainingSpec(batch_size=4), "baseline")
    assert 0.0 <= metrics.accuracy <= 1.0
    assert isinstance(y_train, np.ndarray) and isinstance(y_test, np.ndarray)


def test_several_named_label_arrays_stay_by_output(tmp_path):
    labels = {f"y_{s}.{k}": np.zeros(n, "i8") for s, n in (("train", 16), ("test", 8)) for k in ("a", "b")}
    _, y_train, _, y_test = datasets.load_npz(_save(tmp_path / "d.npz", **labels))
    assert sorted(y_train) == sorted(y_test) == ["a", "b"]


def test_outputs_that_end_in_probabilities_are_named():
    """A model ending in softmax trained with the default loss (from logits) learns on
    probabilities taken as logits; the job warns, naming the output and the loss to give."""
    import tf_keras

    layers = tf_keras.layers
    x = tf_keras.Input((4,))
    h = layers.Dense(8, activation="relu")(x)
    model = tf_keras.Model(
        x,
        [
            layers.Dense(3, activation="softmax", name="cls")(h),
            layers.Dense(1, activation="sigmoid", name="flag")(h),
            layers.Dense(2, name="logits")(h),
            layers.Softmax(name="probs")(layers.Dense(2)(h)),
        ],
    )
    found = inputs.output_activations(model)
    assert found == {"cls": "softmax", "flag": "sigmoid", "logits": "linear", "probs": "softmax"}
    keyed = tf_keras.Model(x, {"a": layers.Dense(2, activation="softmax")(h), "b": layers.Dense(2)(h)})
    assert inputs.output_activations(keyed) == {"a": "softmax", "b": "linear"}
    # the job's warning names the loss the dry run names: binary for a sigmoid of one unit
    units = inputs.output_units(model)
    assert units == {"cls": 3, "flag": 1, "logits": 2, "probs": 2}
    from pruning_core.validation import logits_warning

    warning = logits_warning("flag", found["flag"], "categorical_crossentropy_from_logits", units["flag"])
    assert warning is not None and warning.endswith("give the loss binary_crossentropy")


def test_logits_under_a_loss_taking_probabilities_are_warned_of_too():
    from pruning_core.validation import logits_warning

    said = logits_warning("logits", "linear", "sparse_categorical_crossentropy")
    assert said is not None and said.endswith("give the loss sparse_categorical_crossentropy_from_logits")
    assert logits_warning("logits", "linear", "sparse_categorical_crossentropy_from_logits") is None  # right
    assert logits_warning("box", "linear", "mean_squared_error") is None  # a regression takes values
    assert logits_warning("cls", "softmax", "sparse_categorical_crossentropy") is None  # right
    assert logits_warning("h", "relu", "sparse_categorical_crossentropy") is None  # neither: no claim


def test_one_x_array_for_a_model_of_two_inputs_is_the_dataset_s_mistake():
    import pytest
    import tf_keras as keras

    from pruning_worker.errors import JobInputError

    left, right = keras.Input((3,), name="left"), keras.Input((2,), name="right")
    model = keras.Model([left, right], keras.layers.Dense(4)(keras.layers.Concatenate()([left, right])))
    with pytest.raises(JobInputError, match=r"2 inputs \['left', 'right'\]; store one array per input, named x_train"):
        inputs._check_inputs(model, "x_train", np.zeros((8, 3), "f4"))
    inputs._check_inputs(model, "x_train", {"left": np.zeros((8, 3), "f4"), "right": np.zeros((8, 2), "f4")})
