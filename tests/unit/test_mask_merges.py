"""A padding mask (Embedding mask_zero) that reaches a merge layer: Keras 3 records the merged
mask as keras.ops calls the user never wrote. The model is refused once, naming the merge layer
and why (Keras 3 ORs the masks, tf_keras ANDs them), not as the user's keras.ops calls with
advice to use the layer it already uses; the same model without the mask is taken."""

from __future__ import annotations

import pytest

from pruning_core import modelcheck
from pruning_core.modelcheck import ModelRejected


def _model(path, merge: str, mask_zero: bool):
    import keras

    tokens = keras.Input((12,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(50, 8, mask_zero=mask_zero, name="emb")(tokens)
    seq = keras.layers.LSTM(8, return_sequences=True, name="lstm")(emb)
    merged = getattr(keras.layers, merge)(name="merge")([emb, seq])
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(merged)
    keras.Model(tokens, keras.layers.Dense(3, name="out")(pooled)).save(path)
    return path


@pytest.mark.parametrize("merge", ["Add", "Concatenate"])
def test_a_mask_reaching_a_merge_is_refused_once_naming_the_merge(tmp_path, merge):
    with pytest.raises(ModelRejected) as refused:
        modelcheck.inspect_model(_model(tmp_path / "m.keras", merge, True), 10**9)
    said = str(refused.value)
    assert "reaches the merge layer ['merge']" in said and "an OR of the masks" in said, said
    assert "a keras.ops call or an operator" not in said and "on data" not in said, said
    assert said.count("refused") == 1, said


def test_the_same_model_without_a_mask_is_taken(tmp_path):
    info = modelcheck.inspect_model(_model(tmp_path / "m.keras", "Add", False), 10**9)
    assert ("Add", "merge") in info.layers


def test_a_users_translated_mask_op_is_not_called_a_merge_layers_padding_mask(tmp_path):
    import keras

    L = keras.layers
    t = keras.Input((12,), dtype="int32", name="tokens")
    m1 = keras.Input((12,), dtype="bool", name="m1")
    m2 = keras.Input((12,), dtype="bool", name="m2")
    x = L.LSTM(4)(L.Embedding(50, 8)(t), mask=keras.ops.multiply(m1, m2))
    keras.Model([t, m1, m2], L.Dense(3)(x)).save(tmp_path / "m.keras")
    modelcheck.inspect_model(tmp_path / "m.keras", 10**9)  # was refused as a merge's padding mask
