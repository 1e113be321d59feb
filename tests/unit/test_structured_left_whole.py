"""Layers the dependency walk cannot prune (a depthwise convolution with a depth multiplier, a
grouped convolution, channels_first layers, a shared BatchNormalization, a softmax over the
channels) are copied whole by the surgery, with the channels of the layers tied to them; the
rest of the model is still pruned, and the smaller model runs and gives outputs of the same
shape."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras

from pruning_worker.structured import Options, prune_channels, shrink

L = keras.layers


def depth_multiplier():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu", name="dw")(x)
    x = L.Conv2D(16, 1, activation="relu", name="pw")(x)
    outputs = L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x))
    widths = {"c1": (8, 8), "pw": (16, 8), "out": (4, 4)}
    return keras.Model(inputs, outputs), "dw", widths, {"c1": "depth_multiplier 2"}


def grouped():
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = L.Conv2D(8, 3, groups=2, padding="same", activation="relu", name="gc")(x)
    x = L.Conv2D(16, 1, activation="relu", name="pw")(x)
    outputs = L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x))
    widths = {"c1": (8, 8), "gc": (8, 8), "pw": (16, 8), "out": (4, 4)}
    return keras.Model(inputs, outputs), "gc", widths, {"c1": "grouped", "gc": "grouped"}


def channels_first():
    inputs = keras.Input((1, 12, 12))
    x = L.Conv2D(8, 3, activation="relu", data_format="channels_first", name="c1")(inputs)
    x = L.MaxPooling2D(data_format="channels_first", name="mp")(x)
    x = L.Dense(16, activation="relu", name="fc")(L.Flatten(name="flat")(x))
    outputs = L.Dense(4, name="out")(x)
    widths = {"c1": (8, 8), "fc": (16, 8), "out": (4, 4)}
    return keras.Model(inputs, outputs), "c1", widths, {"c1": "channels_first"}


def shared_batch_norm():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(8, 3, padding="same", name="b")(inputs)
    norm = L.BatchNormalization(name="bn")
    x = L.Concatenate(name="cat")([norm(a), norm(b)])
    x = L.Conv2D(16, 1, activation="relu", name="pw")(x)
    outputs = L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x))
    widths = {"a": (8, 8), "b": (8, 8), "pw": (16, 8), "out": (4, 4)}
    return keras.Model(inputs, outputs), "bn", widths, {"a": "shared", "b": "shared"}


def frozen():
    """A frozen stem (transfer learning): its channels stay, as the user froze its weights."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem", trainable=False)(inputs)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    outputs = L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x))
    widths = {"stem": (8, 8), "c2": (16, 8), "out": (4, 4)}
    return keras.Model(inputs, outputs), "stem", widths, {"stem": "frozen"}


def shared_encoder():
    """A siamese pair: one Dense encodes both inputs. The result listed it neither among the
    widths nor among the layers left whole, so a model of such layers showed no reason at all."""
    left, right = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    encoder = L.Dense(6, activation="relu", name="encoder")
    x = L.Concatenate(name="cat")([encoder(L.Flatten(name="fl")(left)), encoder(L.Flatten(name="fr")(right))])
    x = L.Dense(16, activation="relu", name="fc")(x)
    outputs = L.Dense(1, name="out")(x)
    widths = {"fc": (16, 8), "out": (1, 1)}
    return keras.Model([left, right], outputs), "encoder", widths, {"encoder": "shared (called 2 times)"}


def softmax_activation():
    """A softmax over the channels in the middle of the model: every channel's value depends
    on all the others (a zeroed channel still adds exp(0) to the sum), so none can go. Its
    channels were cut, and the smaller model computed something else."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = L.Activation("softmax", name="sm")(x)
    x = L.Conv2D(16, 1, activation="relu", name="pw")(x)
    outputs = L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x))
    widths = {"c1": (8, 8), "pw": (16, 8), "out": (4, 4)}
    return keras.Model(inputs, outputs), "c1", widths, {"c1": "Activation 'sm' applies softmax across the channels"}


def softmax_dense():
    """A Dense with a softmax of its own in the middle (a gate): its units stay, the layers
    around it are still pruned."""
    inputs = keras.Input((4, 4, 3))
    x = L.Dense(16, activation="softmax", name="gate")(L.Flatten(name="flat")(inputs))
    x = L.Dense(16, activation="relu", name="hidden")(x)
    outputs = L.Dense(4, name="out")(x)
    widths = {"gate": (16, 16), "hidden": (16, 8), "out": (4, 4)}
    return keras.Model(inputs, outputs), "gate", widths, {"gate": "Dense 'gate' applies softmax across the channels"}


MODELS = [
    depth_multiplier,
    grouped,
    channels_first,
    shared_batch_norm,
    frozen,
    shared_encoder,
    softmax_activation,
    softmax_dense,
]


@pytest.fixture(params=MODELS, ids=[m.__name__ for m in MODELS])
def case(request):
    keras.utils.set_random_seed(0)
    model, whole, widths, reasons = request.param()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = [rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
        if isinstance(layer, L.BatchNormalization):
            weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance
        layer.set_weights(weights)
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    xs = [rng.random((3, *shape[1:]), dtype=np.float32) for shape in shapes]
    return model, whole, widths, reasons, xs if len(xs) > 1 else xs[0]


def test_the_layer_left_whole_keeps_its_weights_and_the_rest_is_pruned(case):
    model, whole, widths, reasons, x = case
    outcome = prune_channels(model, Options(ratio=0.5))
    assert {name: (before, after) for name, before, after in outcome.widths} == widths
    left = dict(outcome.left_whole)
    for name, words in reasons.items():
        assert words in left[name]
    for kept, original in zip(outcome.model.get_layer(whole).get_weights(), model.get_layer(whole).get_weights()):
        np.testing.assert_array_equal(kept, original)
    assert outcome.model.count_params() < model.count_params()
    out = outcome.model(x, training=False).numpy()
    assert out.shape == model(x, training=False).numpy().shape and np.isfinite(out).all()


def test_a_surgery_removing_nothing_reproduces_the_model(case):
    model, _, _, _, x = case
    same = shrink(prune_channels(model, Options(ratio=0.5)).graph, {})
    np.testing.assert_allclose(same(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5)


def test_the_job_step_prunes_around_the_layer_left_whole(case):
    from pruning.v1 import pruning_pb2 as pb
    from pruning_worker.structured import step

    model, _, widths, reasons, x = case
    spec = pb.PruningSpec(structured=pb.StructuredPruning(ratio=0.5))
    small, result = step.run(model, spec, x, np.zeros(len(x)), keras.losses.MeanSquaredError())
    assert {w.name: (w.channels_before, w.channels_after) for w in result.layers} == widths
    assert set(reasons) <= {w.name for w in result.left_whole}
    assert result.params_after == small.count_params() < result.params_before


def test_a_scaled_residual_is_pruned_through_its_rescaling():
    """``x + 0.1 * h`` (a Keras 3 operation the bridge makes a Rescaling): one scale for every
    channel, so the channels pass through and the residual group is pruned, not left whole."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    h = L.Conv2D(8, 3, padding="same", name="c2")(x)
    x = L.Add(name="add")([x, L.Rescaling(0.1, name="scaled")(h)])
    outputs = L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    outcome = prune_channels(model, Options(ratio=0.5))
    widths = {name: (before, after) for name, before, after in outcome.widths}
    assert widths["c1"] == widths["c2"] == (8, 4)
    x_in = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    same = shrink(outcome.graph, {})
    np.testing.assert_allclose(same(x_in, training=False).numpy(), model(x_in, training=False).numpy(), atol=1e-5)


def test_a_layer_with_a_softmax_of_its_own_keeps_its_channels_and_loses_its_inputs():
    """``Conv2D(activation="softmax")`` in the middle: its output channels stay (each depends
    on all), the channels of the layer before it still go, cut from its kernel's input axis."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = L.Conv2D(8, 3, padding="same", activation="softmax", name="attn")(x)
    x = L.Conv2D(16, 1, activation="relu", name="pw")(x)
    model = keras.Model(inputs, L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x)))
    outcome = prune_channels(model, Options(ratio=0.5))
    widths = {name: (before, after) for name, before, after in outcome.widths}
    assert widths == {"c1": (8, 4), "attn": (8, 8), "pw": (16, 8), "out": (4, 4)}
    assert ("attn", "Conv2D 'attn' applies softmax across the channels") in outcome.left_whole
    assert outcome.model.get_layer("attn").kernel.shape == (3, 3, 4, 8)
