"""Structured pruning on synthetic models: dependency groups, importance, channel surgery.

For each model: removing no channels gives exactly the original outputs; at ratio 0.5 the
new shapes and parameter count are the ones worked out by hand from the groups, the model
runs and loads back in plain tf_keras; and when the channels to remove are zeroed first, the
smaller model computes exactly what the original did (so every weight went to its place).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras

from pruning_worker.structured import Options, build, prune_channels

L = keras.layers


def _conv_bn(x, filters, kernel, name):
    x = L.Conv2D(filters, kernel, padding="same", name=name)(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def sequential_cnn():
    model = keras.Sequential(
        [
            L.InputLayer(input_shape=(8, 8, 3)),
            L.Conv2D(16, 3, name="c1"),
            L.BatchNormalization(name="c1_bn"),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Conv2D(32, 3, padding="same", name="c2"),
            L.GlobalAveragePooling2D(),
            L.Dense(10, name="logits"),
        ]
    )
    # c1 16 -> 8 (with its BatchNormalization), c2 32 -> 16, logits (the output) whole.
    expected = (27 * 8 + 8) + 4 * 8 + (9 * 8 * 16 + 16) + (16 * 10 + 10)
    return model, expected, {"c1": (16, 8), "c2": (32, 16), "logits": (10, 10)}


def residual():
    inputs = keras.Input((8, 8, 3))
    stem = _conv_bn(inputs, 16, 3, "stem")
    x = _conv_bn(stem, 16, 3, "b1")
    x = L.Conv2D(16, 3, padding="same", name="b2")(x)
    x = L.BatchNormalization(name="b2_bn")(x)
    x = L.ReLU()(L.Add(name="add")([stem, x]))
    outputs = L.Dense(4, name="logits")(L.GlobalAveragePooling2D()(x))
    # stem and b2 feed the Add, so they lose the same 8 channels; b1 its own 8.
    expected = (27 * 8 + 8) + 32 + (9 * 8 * 8 + 8) + 32 + (9 * 8 * 8 + 8) + 32 + (8 * 4 + 4)
    return keras.Model(inputs, outputs), expected, {"stem": (16, 8), "b1": (16, 8), "b2": (16, 8)}


def depthwise_separable():
    inputs = keras.Input((8, 8, 3))
    x = _conv_bn(inputs, 16, 3, "c0")
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.ReLU()(L.BatchNormalization(name="dw_bn")(x))
    x = L.Conv2D(32, 1, activation="relu", name="pw")(x)
    x = L.SeparableConv2D(32, 3, padding="same", name="sep")(x)
    outputs = L.Dense(4, name="logits")(L.GlobalAveragePooling2D()(x))
    expected = (
        (27 * 8 + 8)  # c0
        + 32  # c0_bn
        + (9 * 8 + 8)  # dw: channel for channel with c0
        + 32  # dw_bn
        + (8 * 16 + 16)  # pw
        + (9 * 16 + 16 * 16 + 16)  # sep: depthwise, pointwise, bias
        + (16 * 4 + 4)
    )
    return keras.Model(inputs, outputs), expected, {"c0": (16, 8), "pw": (32, 16), "sep": (32, 16)}


def inception():
    inputs = keras.Input((8, 8, 3))
    stem = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    b1 = L.Conv2D(8, 1, name="b1")(stem)
    b2 = L.Conv2D(16, 3, padding="same", name="b2b")(L.Conv2D(8, 1, name="b2a")(stem))
    b3 = L.Conv2D(8, 1, name="b3")(L.MaxPooling2D(3, 1, padding="same")(stem))
    pooled = L.MaxPooling2D(3, 1, padding="same")(stem)
    x = L.Concatenate(name="concat")([b1, b2, b3, pooled])
    x = L.Conv2D(16, 1, name="mix")(x)
    outputs = L.Dense(4, name="logits")(L.GlobalAveragePooling2D()(x))
    # The concatenation is 4 + 8 + 4 + 4 (stem's own channels) = 20 wide after surgery.
    expected = (27 * 4 + 4) + (4 * 4 + 4) + (4 * 4 + 4) + (9 * 4 * 8 + 8) + (4 * 4 + 4) + (20 * 8 + 8) + (8 * 4 + 4)
    widths = {"stem": (8, 4), "b1": (8, 4), "b2a": (8, 4), "b2b": (16, 8), "b3": (8, 4), "mix": (16, 8)}
    return keras.Model(inputs, outputs), expected, widths


def conv_flatten_dense():
    inputs = keras.Input((6, 6, 1))
    x = L.Conv2D(8, 3, activation="relu", name="conv")(inputs)  # 4 x 4 x 8
    x = L.Dense(16, activation="relu", name="hidden")(L.Flatten()(x))
    outputs = L.Dense(4, name="logits")(x)
    # Flatten repeats the 4 kept channels at 16 positions: 64 kernel rows of 128 survive.
    expected = (9 * 4 + 4) + (64 * 8 + 8) + (8 * 4 + 4)
    return keras.Model(inputs, outputs), expected, {"conv": (8, 4), "hidden": (16, 8)}


def two_outputs():
    inputs = keras.Input((8, 8, 3))
    features = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    shared = L.Dense(16, activation="relu", name="shared")(L.GlobalAveragePooling2D()(features))
    classes = L.Dense(4, name="classes")(shared)
    aux = L.GlobalAveragePooling2D()(L.Conv2D(2, 1, name="aux")(features))
    expected = (27 * 4 + 4) + (4 * 8 + 8) + (8 * 4 + 4) + (4 * 2 + 2)
    return keras.Model(inputs, [classes, aux]), expected, {"conv": (8, 4), "shared": (16, 8), "aux": (2, 2)}


def augmented():
    """Preprocessing and augmentation layers in front of and between the convolutions: the
    channels pass through them."""
    inputs = keras.Input((12, 12, 3))
    x = L.RandomFlip("horizontal")(L.Resizing(10, 10)(inputs))
    x = L.Conv2D(16, 3, name="c1")(x)
    x = L.RandomRotation(0.1)(x)
    x = L.RandomZoom(0.1)(L.CenterCrop(6, 6)(x))
    x = L.RandomContrast(0.2)(L.RandomTranslation(0.1, 0.1)(x))
    x = L.Conv2D(32, 3, padding="same", name="c2")(L.RandomBrightness(0.1)(x))
    outputs = L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(x))
    # c1 16 -> 8, c2 32 -> 16, logits (the output) whole.
    expected = (27 * 8 + 8) + (9 * 8 * 16 + 16) + (16 * 10 + 10)
    return keras.Model(inputs, outputs), expected, {"c1": (16, 8), "c2": (32, 16), "logits": (10, 10)}


MODELS = [sequential_cnn, residual, depthwise_separable, inception, conv_flatten_dense, two_outputs, augmented]


def _randomise(model, seed=0):
    """Random weights everywhere (BatchNormalization statistics too), so every slice matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = [rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
        if isinstance(layer, L.BatchNormalization):
            weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance
        layer.set_weights(weights)


def _x(model, n=3, seed=1):
    return np.random.default_rng(seed).random((n, *model.input_shape[1:]), dtype=np.float32)


def _outputs(model, x):
    out = model(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]


@pytest.fixture(params=MODELS, ids=[m.__name__ for m in MODELS])
def case(request):
    keras.utils.set_random_seed(0)
    model, expected, widths = request.param()
    _randomise(model)
    return model, expected, widths


def test_ratio_zero_gives_identical_outputs(case):
    model, _, _ = case
    outcome = prune_channels(model, Options(ratio=0.0))
    x = _x(model)
    assert outcome.model is not model and outcome.model.count_params() == model.count_params()
    for a, b in zip(_outputs(model, x), _outputs(outcome.model, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ratio_half_shapes_params_and_reload(case, tmp_path):
    model, expected, widths = case
    outcome = prune_channels(model, Options(ratio=0.5))
    small = outcome.model
    assert {n: (b, a) for n, b, a in outcome.widths if n in widths} == widths
    for name, (_, after) in widths.items():
        assert small.get_layer(name).output_shape[-1] == after
    assert small.count_params() == expected < model.count_params()
    x = _x(model)
    outputs = _outputs(small, x)
    assert [o.shape for o in outputs] == [o.shape for o in _outputs(model, x)]
    assert all(np.isfinite(o).all() for o in outputs)
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert loaded.count_params() == expected
    for a, b in zip(outputs, _outputs(loaded, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _zero_removed(model, outcome):
    """Zeroes, in the original, the channels surgery removed: their producers' filters and
    biases, and their BatchNormalization scale and offset, so those channels carry 0."""
    graph = outcome.graph
    for group_id, mask in outcome.keep.items():
        group = graph.groups[group_id]
        gone = ~mask
        for name in group.producers:
            layer = model.get_layer(name)
            weights = layer.get_weights()
            weights[-2 if isinstance(layer, L.SeparableConv2D) else 0][..., gone] = 0
            weights[-1][gone] = 0
            layer.set_weights(weights)
        for name in group.per_channel:
            layer = model.get_layer(name)
            if isinstance(layer, L.BatchNormalization):
                gamma, beta, mean, var = layer.get_weights()
                gamma[gone], beta[gone] = 0, 0
                layer.set_weights([gamma, beta, mean, var])


def test_removed_channels_were_the_zeroed_ones(case):
    """Zero the channels a first surgery picks; the second surgery (L1 ranks zeros last)
    removes exactly those, and its model computes what the original computes."""
    model, _, _ = case
    first = prune_channels(model, Options(ratio=0.5))
    _zero_removed(model, first)
    second = prune_channels(model, Options(ratio=0.5))
    assert {g: m.tolist() for g, m in second.keep.items()} == {g: m.tolist() for g, m in first.keep.items()}
    x = _x(model)
    for a, b in zip(_outputs(model, x), _outputs(second.model, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_groups_follow_the_graph():
    model, _, _ = residual()
    graph = build(model)
    stem = graph.group_of("stem")
    assert sorted(stem.producers) == ["b2", "stem"]
    assert {"stem_bn", "b2_bn"} <= set(stem.per_channel) and "b1" in stem.consumers and stem.prunable
    logits = graph.group_of("logits")
    assert not logits.prunable and any("logits" in r for r in logits.reasons)


def test_outputs_are_left_whole_with_the_reason():
    model, _, _ = two_outputs()
    outcome = prune_channels(model, Options(ratio=0.5))
    left = dict(outcome.left_whole)
    assert set(left) == {"classes", "aux"}
    assert "model output" in left["aux"] and "model output 'classes'" in left["classes"]


def test_unsupported_layer_leaves_its_groups_whole_and_prunes_the_rest():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, activation="relu", name="free")(inputs)
    x = L.Conv2D(8, 3, name="stuck")(x)
    x = L.LayerNormalization(name="norm")(x)  # normalises across channels: removing some changes the rest
    x = L.Reshape((-1,), name="reshape")(x)
    outputs = L.Dense(4, name="logits")(x)
    model = keras.Model(inputs, outputs)
    outcome = prune_channels(model, Options(ratio=0.5))
    left = dict(outcome.left_whole)
    assert "LayerNormalization 'norm'" in left["stuck"]
    assert dict((n, a) for n, _, a in outcome.widths) == {"free": 4, "stuck": 8, "logits": 4}
    assert outcome.model.count_params() == (27 * 4 + 4) + (9 * 4 * 8 + 8) + 16 + (4 * 4 * 8 * 4 + 4)


def test_options_layer_ratios_rounding_and_minimum():
    model, _, _ = inception()
    _randomise(model)
    outcome = prune_channels(model, Options(ratio=0.5, layer_ratios={"b2b": 0.0, "mix": 0.9}, round_to=3))
    widths = {n: a for n, _, a in outcome.widths}
    assert widths["b2b"] == 16  # overridden to 0
    assert widths["stem"] == 6  # 4 rounded up to a multiple of 3
    assert widths["mix"] == 3  # 16 - 14 = 2, rounded up to 3
    floor = prune_channels(model, Options(ratio=0.9, min_channels=5))
    assert {n: a for n, _, a in floor.widths}["stem"] == 5
    with pytest.raises(ValueError, match="ratio"):
        Options(ratio=1.0)


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (
            Options(ratio=0.5, layer_ratios={"stem": 0.25}, round_to=8),
            "round_to 8 rounds the 6 channels a ratio of 0.25 keeps up to all 8",
        ),
        (Options(ratio=0.5, min_channels=8), "min_channels 8 keeps all 8 channels (a ratio of 0.5 keeps 4)"),
        (Options(ratio=0.5, layer_ratios={"stem": 0.1}), "a ratio of 0.1 cuts none of its 8 channels"),
    ],
)
def test_a_layer_its_ratio_does_not_shrink_is_listed_left_whole_saying_why(options, why):
    model, _, _ = inception()
    _randomise(model)
    outcome = prune_channels(model, options)
    assert {n: a for n, _, a in outcome.widths}["stem"] == 8
    assert ("stem", why) in outcome.left_whole
    assert any(after < before for _, before, after in outcome.widths)  # others were cut


@pytest.mark.parametrize("criterion", ["l2", "bn_scale", "taylor"])
def test_criteria_rank_the_channels(criterion):
    model, expected, _ = residual()
    _randomise(model)
    x = _x(model, n=16)
    y = np.arange(16) % 4
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    outcome = prune_channels(model, Options(ratio=0.5, criterion=criterion), data=(x, y, loss))
    assert outcome.model.count_params() == expected
    if criterion == "bn_scale":
        # b1's group has one BatchNormalization: the kept channels are its largest |gamma|.
        gamma = np.abs(model.get_layer("b1_bn").gamma.numpy())
        kept = outcome.keep[outcome.graph.group_of("b1").id]
        assert gamma[kept].min() >= gamma[~kept].max()


def test_job_step_on_a_two_output_model_with_taylor():
    from pruning.v1 import pruning_pb2 as pb
    from pruning_worker.inputs import head
    from pruning_worker.structured import step

    model, expected, _ = two_outputs()
    _randomise(model)
    x = _x(model, n=40)
    y = head([np.arange(40) % 4, np.zeros((40, 2), "float32")], 32)  # by output, as by_output gives
    assert [len(v) for v in y] == [32, 32]
    from pruning_worker.losses import JobLoss

    training = pb.TrainingSpec(
        loss="mean_squared_error", output_losses={"classes": "sparse_categorical_crossentropy_from_logits"}
    )
    loss = JobLoss.of(model, training).function()  # the job's loss, summed over the two outputs

    spec = pb.PruningSpec(structured=pb.StructuredPruning(ratio=0.5, importance=pb.IMPORTANCE_CRITERION_TAYLOR))
    small, result = step.run(model, spec, x[:32], y, loss)
    assert result.params_after == small.count_params() == expected
    assert result.params_before == model.count_params()
    assert 0 < result.flops_after < result.flops_before
    assert result.criterion == "taylor" and result.zero_ratio_max_abs_diff <= step.IDENTITY_TOLERANCE
    assert sorted(x.name for x in result.left_whole) == ["aux", "classes"]
    refused = pb.PruningSpec(structured=pb.StructuredPruning(ratio=0.5, layer_ratios={"classes": 0.5}))
    with pytest.raises(ValueError, match=r"layer_ratios\[classes\]"):
        step.run(model, refused, x, y, loss)


def test_job_step_refuses_a_ratio_for_a_layer_without_channels_of_its_own():
    from pruning.v1 import pruning_pb2 as pb
    from pruning_worker.errors import JobInputError
    from pruning_worker.structured import step

    model, _, _ = residual()
    spec = pb.PruningSpec(structured=pb.StructuredPruning(ratio=0.5, layer_ratios={"stem_bn": 0.5}))
    with pytest.raises(JobInputError, match="stem_bn"):
        step.run(model, spec, _x(model), np.zeros(3), keras.losses.MeanSquaredError())


def test_job_step_says_a_shared_layer_in_layer_ratios_is_shared():
    from pruning.v1 import pruning_pb2 as pb
    from pruning_worker.errors import JobInputError
    from pruning_worker.structured import step

    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    shared = keras.layers.Conv2D(8, 3, name="shared_conv")
    joined = keras.layers.Concatenate()([shared(a), shared(b)])
    out = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(joined))
    model = keras.Model([a, b], out)
    x = [np.zeros((4, 8, 8, 3), "float32")] * 2
    spec = pb.PruningSpec(structured=pb.StructuredPruning(ratio=0.0, layer_ratios={"shared_conv": 0.5}))
    with pytest.raises(JobInputError, match=r"\['shared_conv'\] are shared \(called more than once\)") as caught:
        step.run(model, spec, x, np.zeros(4), keras.losses.MeanSquaredError())
    assert "not layers with channels" not in str(caught.value)


def test_job_step_on_a_model_with_dict_outputs():
    """Keras 3's ``Model(x, {"cls": ..., "box": ...})`` arrives as dict outputs: the step
    compared them as lists and failed the job as the user's input."""
    from pruning.v1 import pruning_pb2 as pb
    from pruning_worker.structured import step

    inputs = keras.Input((8, 8, 3))
    features = L.Flatten()(L.Conv2D(8, 3, activation="relu", name="conv")(inputs))
    model = keras.Model(inputs, {"cls": L.Dense(4, name="cls")(features), "box": L.Dense(1, name="box")(features)})
    _randomise(model)
    x = _x(model, n=16)
    spec = pb.PruningSpec(structured=pb.StructuredPruning(ratio=0.5))
    small, result = step.run(model, spec, x, None, None)
    assert result.zero_ratio_max_abs_diff <= step.IDENTITY_TOLERANCE
    assert small.get_layer("conv").filters == 4 and sorted(small(x[:2])) == ["box", "cls"]


def _concat_bn():
    """DenseNet's transition: two branches concatenated, then one BatchNormalization."""
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(8, 3, padding="same", name="b")(inputs)
    x = L.BatchNormalization(name="bn")(L.Concatenate(name="cat")([a, b]))
    x = L.Conv2D(8, 1, activation="relu", name="mix")(L.ReLU()(x))
    model = keras.Model(inputs, L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x)))
    return model, {"a": lambda gamma: gamma[:8], "b": lambda gamma: gamma[8:]}


def _flatten_bn():
    """A BatchNormalization over flattened features: each channel once per position."""
    inputs = keras.Input((2, 2, 3))
    x = L.Flatten(name="flat")(L.Conv2D(8, 3, padding="same", name="a")(inputs))
    x = L.Dense(8, activation="relu", name="hidden")(L.BatchNormalization(name="bn")(x))
    # 2 x 2 positions of 8 channels: entry p * 8 + c is channel c at position p
    return keras.Model(inputs, L.Dense(4, name="out")(x)), {"a": lambda gamma: gamma.reshape(4, 8).sum(axis=0)}


@pytest.mark.parametrize("build_model", [_concat_bn, _flatten_bn], ids=["concatenate", "flatten"])
def test_bn_scale_ranks_each_group_by_its_own_channels_of_a_shared_batch_normalization(build_model):
    """The BatchNormalization after a Concatenate (or a Flatten) is wider than each group it
    holds: bn_scale took its whole |gamma| as one group's scores, so the ranking indexed other
    groups' channels (an IndexError past the group's width, failing the job, or the wrong
    channels kept)."""
    model, producers = build_model()
    _randomise(model)
    bn = model.get_layer("bn")
    gamma, beta, mean, var = bn.get_weights()
    gamma = np.random.default_rng(3).permutation(gamma.size).astype("float32") + 1.0  # distinct, all above 0
    bn.set_weights([gamma, beta, mean, var])
    outcome = prune_channels(model, Options(ratio=0.5, criterion="bn_scale"))
    for name, own in producers.items():
        group = outcome.graph.group_of(name)
        scores, kept = own(gamma), outcome.keep[group.id]
        assert kept.sum() == group.size // 2 == 4
        assert scores[kept].min() > scores[~kept].max(), name
    x = _x(model)
    assert outcome.model(x, training=False).shape == model(x, training=False).shape
