"""A padding mask (Embedding mask_zero, Masking) that reaches a merge layer. Keras 3 passes on
an OR of its inputs' masks (none at all from Add and the like where an input has none), tf_keras
an AND: the same mask when every input carries one and the same, as in a residual connection
over a masked sequence. Such a model is taken and translated exactly; one whose merge combines
different masks, or a masked input with an unmasked one, is refused once, naming the merge (at
upload where the file records the merged mask, else when the job translates the model), never
translated into a model that computes other outputs on padded sequences."""

from __future__ import annotations

import numpy as np
import pytest

from pruning_core import modelcheck
from pruning_core.modelcheck import ModelRejected


def _model(path, kind: str, mask_zero: bool = True):
    import keras
    from keras3_models import randomise

    L = keras.layers
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    inputs = [tokens]
    emb = L.Embedding(50, 8, mask_zero=mask_zero, name="emb")(tokens)
    seq = L.LSTM(8, return_sequences=True, name="lstm")(emb)
    if kind == "residual":  # one mask on both inputs of each merge
        added = L.Add(name="merge")([emb, seq])
        merged = L.Concatenate(name="cat")([L.LSTM(8, return_sequences=True, name="lstm2")(added), added])
    elif kind == "steps":  # concatenated along the steps: each keeps its own mask in both
        merged = L.Concatenate(axis=1, name="merge")([emb, seq])
    elif kind == "masking":
        x = keras.Input((12, 4), name="x")
        inputs = [x]
        masked = L.Masking(0.0, name="masking")(x)
        merged = L.Add(name="merge")([masked, L.LSTM(4, return_sequences=True, name="lstm")(masked)])
    elif kind in ("Add", "Concatenate"):  # a second, other mask
        other = keras.Input((12,), dtype="int32", name="other")
        inputs.append(other)
        merged = getattr(L, kind)(name="merge")([seq, L.Embedding(50, 8, mask_zero=True, name="emb2")(other)])
    elif kind == "unmasked":  # Concatenate: Keras 3 records an OR with ones, found at upload
        merged = L.Concatenate(name="merge")([seq, L.Dense(8, name="dense")(L.Embedding(50, 8, name="plain")(tokens))])
    elif kind == "unmasked_add":  # Add: Keras 3 records nothing, found when the job translates it
        merged = L.Add(name="merge")([seq, L.Embedding(50, 8, name="plain")(tokens)])
    pooled = L.GlobalAveragePooling1D(name="pool")(merged)
    model = randomise(keras.Model(inputs, L.Dense(3, name="out")(pooled)))
    model.save(path)
    return path


@pytest.mark.parametrize("kind", ["Add", "Concatenate", "unmasked"])
def test_a_merge_of_different_masks_is_refused_at_upload_once_naming_the_merge(tmp_path, kind):
    with pytest.raises(ModelRejected) as refused:
        modelcheck.inspect_model(_model(tmp_path / "m.keras", kind), 10**9)
    said = str(refused.value)
    assert "reaches the merge layer ['merge']" in said and "an OR of the masks" in said, said
    assert "a keras.ops call or an operator" not in said and "on data" not in said, said
    assert said.count("refused") == 1, said


@pytest.mark.parametrize("kind", ["residual", "steps", "masking"])
def test_a_merge_of_one_mask_is_taken_and_translated_exactly_on_padded_sequences(tmp_path, kind):
    import keras

    from pruning_worker import bridge

    path = _model(tmp_path / "m.keras", kind)
    modelcheck.inspect_model(path, 10**9)  # was refused: the merged mask is the one mask
    model3 = keras.saving.load_model(path)
    model2 = bridge.to_tf_keras(model3)
    probe = bridge.make_probe(model3, batch=6)
    padding = 0.0
    for row in range(6):  # from 1 to 11 steps of padding
        probe[0][row, 11 - 2 * row :] = padding
    got3, got2 = model3.predict(probe[0], verbose=0), model2.predict(probe[0], verbose=0)
    assert np.abs(got3 - got2).max() <= 1e-5
    assert bridge.check_equivalence(model3, model2) <= 1e-5  # and on the probe a job uses


def test_an_unmasked_input_added_to_a_masked_one_is_refused_when_the_job_translates_it(tmp_path):
    import keras

    from pruning_worker import bridge

    path = _model(tmp_path / "m.keras", "unmasked_add")
    modelcheck.inspect_model(path, 10**9)  # the file records no merged mask: nothing to see at upload
    with pytest.raises(bridge.UnsupportedLayer) as refused:
        bridge.to_tf_keras(keras.saving.load_model(path))
    assert "layer 'merge' of class Add: merges inputs that carry different padding masks" in str(refused.value)


def test_the_same_model_without_a_mask_is_taken(tmp_path):
    info = modelcheck.inspect_model(_model(tmp_path / "m.keras", "Add", mask_zero=False), 10**9)
    assert ("Add", "merge") in info.layers


def test_the_probe_pads_every_second_sequence_fed_to_an_embedding_or_a_masking_layer(tmp_path):
    import keras

    from pruning_worker import bridge

    ids = bridge.make_probe(keras.saving.load_model(_model(tmp_path / "e.keras", "residual")), batch=4)[0]
    assert (ids[1::2, 6:] == 0).all() and (ids[0::2, 6:] != 0).any()
    steps = bridge.make_probe(keras.saving.load_model(_model(tmp_path / "m.keras", "masking")), batch=4)[0]
    assert (steps[1::2, 6:] == 0).all() and (steps[0::2] != 0).all()


def test_a_users_translated_mask_op_is_not_called_a_merge_layers_padding_mask(tmp_path):
    import keras

    L = keras.layers
    t = keras.Input((12,), dtype="int32", name="tokens")
    m1 = keras.Input((12,), dtype="bool", name="m1")
    m2 = keras.Input((12,), dtype="bool", name="m2")
    x = L.LSTM(4)(L.Embedding(50, 8)(t), mask=keras.ops.multiply(m1, m2))
    keras.Model([t, m1, m2], L.Dense(3)(x)).save(tmp_path / "m.keras")
    modelcheck.inspect_model(tmp_path / "m.keras", 10**9)  # was refused as a merge's padding mask


@pytest.mark.parametrize("merge", ["Multiply", "Maximum", "Minimum"])
def test_a_merge_that_fills_the_padded_steps_is_refused_when_the_job_loads_it(tmp_path, merge):
    """Keras 3's Multiply writes zeros on the padded steps of one mask, its Maximum and Minimum
    the first input's values; tf_keras computes those steps from every input. A GlobalMaxPooling1D
    (which reads every step) after a gated residual gave other outputs on padded sequences: the
    upload took the model and the job failed on its probe as "not the same model", or trained it
    where the probe pads nothing."""
    import keras
    from keras3_models import randomise

    from pruning_worker import bridge, safe_load
    from pruning_worker.errors import JobInputError

    L = keras.layers
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    emb = L.Embedding(50, 8, mask_zero=True, name="emb")(tokens)
    gate = L.Dense(8, activation="sigmoid", name="gate")(L.LSTM(8, return_sequences=True, name="lstm")(emb))
    merged = getattr(L, merge)(name="merge")([emb, gate])
    randomise(keras.Model(tokens, L.Dense(3, name="out")(L.GlobalMaxPooling1D(name="pool")(merged)))).save(
        tmp_path / "m.keras"
    )
    modelcheck.inspect_model(tmp_path / "m.keras", 10**9)  # nothing in the file says so
    with pytest.raises(bridge.UnsupportedLayer) as refused:
        bridge.to_tf_keras(keras.saving.load_model(tmp_path / "m.keras"))
    assert f"layer 'merge' of class {merge}: merges padded sequences" in str(refused.value)
    with pytest.raises(JobInputError, match=f"layer 'merge' of class {merge}"):  # refused, not a ConversionError
        safe_load.load(tmp_path / "m.keras", tmp_path, 10**9)


def _same_mask_twice(path, kind: str):
    import keras
    from keras3_models import randomise

    L = keras.layers
    if kind == "two_embeddings":  # two Embeddings of one token input: two not_equal(tokens, 0), one mask
        tokens = keras.Input((12,), dtype="int32", name="tokens")
        inputs = [tokens]
        a, b = (
            L.Embedding(50, 8, mask_zero=True, name="a")(tokens),
            L.Embedding(50, 8, mask_zero=True, name="b")(tokens),
        )
        merged = L.Add(name="merge")([a, L.LSTM(8, return_sequences=True, name="lstm")(b)])
    else:
        x = keras.Input((12, 4), name="x")
        inputs = [x]
        if kind in ("two_maskings", "other_value"):  # two Masking layers of one input
            a = L.Masking(0.0, name="a")(x)
            b = L.Masking(0.0 if kind == "two_maskings" else 1.0, name="b")(x)
            merged = L.Add(name="merge")(
                [L.Dense(4, name="dense")(a), L.LSTM(4, return_sequences=True, name="lstm")(b)]
            )
        else:  # "steps": two masked inputs side by side along the steps (the README: taken)
            y = keras.Input((12, 4), name="y")
            inputs.append(y)
            merged = L.Concatenate(axis=1, name="merge")([L.Masking(0.0, name="a")(x), L.Masking(0.0, name="b")(y)])
    randomise(keras.Model(inputs, L.Dense(3, name="out")(L.LSTM(6, name="last")(merged)))).save(path)
    return path


@pytest.mark.parametrize("kind", ["two_embeddings", "two_maskings", "steps"])
def test_one_mask_computed_twice_or_masks_along_the_steps_are_taken_at_upload(tmp_path, kind):
    """The upload told masks apart by the operation that recorded them, where the bridge (and
    Keras) compare what they compute: two Embeddings of one token input, or two Masking layers
    of one input, were refused at upload as "different masks", as was a Concatenate along the
    steps of two masked inputs, which the README says is translated."""
    import keras

    from pruning_worker import bridge

    path = _same_mask_twice(tmp_path / "m.keras", kind)
    modelcheck.inspect_model(path, 10**9)  # was refused: "reaches the merge layer"
    model3 = keras.saving.load_model(path)
    model2 = bridge.to_tf_keras(model3)
    probe = bridge.make_probe(model3, batch=6)
    for values in probe:
        for row in range(6):  # from 1 to 11 steps of padding
            values[row, 11 - 2 * row :] = 0
    got3 = model3.predict(probe if len(probe) > 1 else probe[0], verbose=0)
    got2 = model2.predict(probe if len(probe) > 1 else probe[0], verbose=0)
    assert np.abs(got3 - got2).max() <= 1e-5


def test_two_masking_layers_of_one_input_with_other_values_are_still_refused_at_upload(tmp_path):
    with pytest.raises(ModelRejected, match=r"reaches the merge layer \['merge'\]"):
        modelcheck.inspect_model(_same_mask_twice(tmp_path / "m.keras", "other_value"), 10**9)
