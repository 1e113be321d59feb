"""The Embedding id check looks only at the inputs of a nested model that the checked
input feeds, not at every input of that nested model."""

from __future__ import annotations

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_worker import inputs
from pruning_worker.errors import JobInputError

SPEC = pb.TrainingSpec(loss="sparse_categorical_crossentropy_from_logits")


def _model():
    import tf_keras as keras

    ti = keras.Input((5,), dtype="int32", name="inner_ids")
    fi = keras.Input((3,), name="inner_feats")
    emb = keras.layers.Flatten()(keras.layers.Embedding(10, 4, name="emb")(ti))
    inner = keras.Model([ti, fi], keras.layers.Concatenate()([emb, keras.layers.Dense(4)(fi)]), name="inner")
    ids = keras.Input((5,), dtype="int32", name="ids")
    feats = keras.Input((3,), name="feats")
    return keras.Model({"ids": ids, "feats": feats}, keras.layers.Dense(2)(inner([ids, feats])))


def _x(n=32):
    rng = np.random.default_rng(0)
    return {"ids": rng.integers(0, 10, (n, 5)).astype("int32"), "feats": rng.normal(size=(n, 3)).astype("float32")}


def test_float_features_beside_ids_in_a_nested_model_are_not_refused():
    x, y = _x(), np.arange(32) % 2
    inputs.check(_model(), (x, y, x, y), SPEC)  # negative float features feed a Dense, not the Embedding


def test_ids_past_the_rows_of_a_nested_models_embedding_are_still_refused():
    x, y = _x(), np.arange(32) % 2
    bad = {**x, "ids": x["ids"].copy()}
    bad["ids"][4, 1] = 10
    with pytest.raises(JobInputError, match=r"x_train\.ids .*sample 4.*'emb' has input_dim 10"):
        inputs.check(_model(), (bad, y, x, y), SPEC)
