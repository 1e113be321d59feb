"""Ids past an Embedding's rows are refused before any step runs: on a CPU each step would fail
on them, but on a GPU the lookup gives zeros, and the job would train and report on data its
model cannot take. A bad id the check cannot see (inside a model) still fails distillation's
first pass as an input error naming its cause."""

from __future__ import annotations

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_worker import distill, inputs
from pruning_worker.errors import JobInputError

SPEC = pb.TrainingSpec(loss="sparse_categorical_crossentropy_from_logits")


def _data(x_train, x_test, n_classes: int = 2):
    n, m = (len(next(iter(x.values()))) if isinstance(x, dict) else len(x) for x in (x_train, x_test))
    return x_train, np.arange(n) % n_classes, x_test, np.arange(m) % n_classes


def _text_model(input_dim: int = 10):
    import tf_keras as keras

    tokens = keras.Input((5,), dtype="int32", name="tokens")
    h = keras.layers.Flatten()(keras.layers.Embedding(input_dim, 4, name="emb")(tokens))
    return keras.Model(tokens, keras.layers.Dense(2, name="out")(h))


def test_ids_within_the_rows_pass_and_one_past_them_is_refused_naming_the_sample():
    model = _text_model()
    x = np.random.default_rng(0).integers(0, 10, (32, 5)).astype("int32")
    inputs.check(model, _data(x, x[:8]), SPEC)
    bad = x.copy()
    bad[7, 2] = 10
    with pytest.raises(JobInputError, match=r"x_train holds ids in \[0, 10\] \(the first outside in sample 7\)"):
        inputs.check(model, _data(bad, x[:8]), SPEC)
    with pytest.raises(JobInputError, match=r"x_test .*Embedding 'emb' has input_dim 10: ids must be in \[0, 9\]"):
        inputs.check(model, _data(x, -bad[:8]), SPEC)


def test_a_sequential_model_of_float_ids_is_checked_too():
    import tf_keras as keras

    model = keras.Sequential(
        [keras.layers.Embedding(30, 4, input_length=5), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.build((None, 5))
    x = np.random.default_rng(0).integers(0, 30, (16, 5)).astype("float32")
    inputs.check(model, _data(x, x), SPEC)
    x[3, 0] = 30.0
    with pytest.raises(JobInputError, match="input_dim 30"):
        inputs.check(model, _data(x, x), SPEC)


def test_only_the_inputs_that_feed_an_embedding_are_checked_by_name():
    import tf_keras as keras

    tokens = keras.Input((4,), dtype="int32", name="tokens")
    extra = keras.Input((3,), name="extra")
    nested = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(8, 2, name="inner")])
    h = keras.layers.Concatenate()([keras.layers.Flatten()(nested(tokens)), extra])
    model = keras.Model({"tokens": tokens, "extra": extra}, keras.layers.Dense(2)(h))
    rng = np.random.default_rng(0)
    good = {"tokens": rng.integers(0, 8, (16, 4)).astype("int32"), "extra": rng.normal(size=(16, 3)) * 100}
    inputs.check(model, _data(good, good), SPEC)  # "extra" holds values far past 8: not ids
    bad = {**good, "tokens": good["tokens"].copy()}
    bad["tokens"][5, 1] = 8
    with pytest.raises(JobInputError, match=r"x_train\.tokens .*Embedding 'inner' has input_dim 8"):
        inputs.check(model, _data(bad, good), SPEC)


def test_a_bad_id_in_distillation_s_first_pass_is_an_input_error():
    """An id past a model's table that the data check cannot see (it feeds the Embedding
    through another layer): the teacher's outputs on the training data, the first pass over
    it, fail as an input error naming the cause, not as an internal error."""
    import tf_keras as keras

    tokens = keras.Input((5,), dtype="int32", name="tokens")
    shifted = keras.layers.Lambda(lambda t: t + 1)(tokens)
    h = keras.layers.Flatten()(keras.layers.Embedding(10, 4)(shifted))
    model = keras.Model(tokens, keras.layers.Dense(2)(h))
    x = np.random.default_rng(0).integers(0, 9, (32, 5)).astype("int32")
    x[3, 0] = 9  # 10 after the shift: past the table
    with pytest.raises(
        JobInputError, match=r"distillation .* failed on this model, data and spec: .*is not in \[0, 10\)"
    ):
        distill.prepare(model, x, np.arange(32) % 2, "sparse_categorical_crossentropy_from_logits", 0.5, 4.0, 16)
