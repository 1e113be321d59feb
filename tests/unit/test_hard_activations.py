"""MobileNetV3's activations, which tf_keras lacks: Keras 3's hard_sigmoid (relu6(x + 3) / 6;
tf_keras's hard_sigmoid is another function) and hard_silu (x times it). An Activation layer of
either is translated into tf_keras layers computing it exactly; the upload check took none of
them, refusing MobileNetV3 outright."""

from __future__ import annotations

import numpy as np
import pytest

from pruning_core import modelcheck


def test_mobilenet_v3_is_taken_at_upload_and_translated_exactly(tmp_path):
    import keras

    from pruning_worker import bridge

    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=10)
    model.save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30)  # refused 19 times before
    assert info.keras_version == 3
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    translated = bridge.to_tf_keras(loaded)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    diff, _ = bridge.compare(loaded, translated, [x])
    assert diff <= 1e-5
    back = bridge.to_keras3(translated, loaded)
    assert np.abs(np.asarray(back(x)) - np.asarray(loaded(x))).max() <= 1e-6


@pytest.mark.parametrize("name", ["hard_sigmoid", "hard_silu", "hard_swish"])
def test_each_is_the_keras3_function_on_every_range(name):
    import keras
    import tf_keras

    from pruning_worker import bridge

    inputs = keras.Input((7,))
    model = keras.Model(inputs, keras.layers.Activation(name, name="act")(inputs))
    translated = bridge.to_tf_keras(model)
    x = np.linspace(-8, 8, 7 * 101, dtype="float32").reshape(101, 7)  # both kinks and both flat parts
    assert np.abs(np.asarray(translated(x)) - np.asarray(model(x))).max() <= 1e-6
    assert translated.layers[-1].name == "act" and not translated.weights
    assert not isinstance(translated.layers[-1], tf_keras.layers.Activation)


def test_a_layers_own_hard_activation_is_refused_at_upload_with_the_way_round(tmp_path):
    import keras

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(3, activation="hard_silu", name="d")(inputs)).save(tmp_path / "m.keras")
    with pytest.raises(modelcheck.ModelRejected) as refused:
        modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30)
    assert "use an Activation('hard_silu') layer after a linear one instead" in str(refused.value)


def test_a_clash_with_the_names_of_the_translation_and_a_masked_hard_sigmoid_are_refused_by_name():
    """The tf_keras layers of Activation("a") are named a_hard_sigmoid_scale and a_hard_sigmoid:
    a model holding such a name failed as "the name ... is used 2 times", naming none of the
    user's layers. Rescaling drops a padding mask: hard_sigmoid over one failed at a later layer."""
    import keras

    from pruning_worker import bridge

    L = keras.layers
    inputs = keras.Input((4,))
    x = L.Activation("hard_silu", name="a")(L.Dense(4, name="a_hard_sigmoid_scale")(inputs))
    with pytest.raises(bridge.UnsupportedLayer, match="layer 'a' of class Activation: .*'a_hard_sigmoid_scale'"):
        bridge.to_tf_keras(keras.Model(inputs, L.Dense(2)(x)))

    tokens = keras.Input((6,), dtype="int32")
    x = L.Activation("hard_sigmoid", name="gate")(L.Embedding(20, 4, mask_zero=True)(tokens))
    with pytest.raises(
        bridge.UnsupportedLayer, match="layer 'gate' of class Activation: is hard_sigmoid over a masked"
    ):
        bridge.to_tf_keras(keras.Model(tokens, L.GlobalAveragePooling1D()(x)))
    x = L.Activation("hard_silu", name="silu")(L.Embedding(20, 4, mask_zero=True)(tokens))  # the Multiply keeps it
    model = keras.Model(tokens, L.GlobalAveragePooling1D()(x))
    assert bridge.compare(model, bridge.to_tf_keras(model))[0] <= 1e-6


def test_the_xnnpack_policy_over_a_translated_hard_activation_names_the_activation():
    """TFMOT's XNNPACK policy takes no Rescaling: the job failed naming a layer the user never had."""
    import keras
    import tensorflow_model_optimization as tfmot

    from pruning.v1 import pruning_pb2 as pb
    from pruning_worker import bridge, recipe
    from pruning_worker.errors import JobInputError

    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="valid")(x)
    x = L.Activation("hard_swish", name="stem_act")(x)
    x = L.Conv2D(8, 1)(x)
    model = bridge.to_tf_keras(keras.Model(inputs, L.GlobalAveragePooling2D(keepdims=True)(x)))
    spec = pb.PruningSpec(policy=pb.PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK)
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    with pytest.raises(JobInputError, match="Activation layers stem_act are translated as Rescaling"):
        recipe.apply_pruning(model, spec, schedule)
