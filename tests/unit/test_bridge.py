"""The Keras 3 <-> tf_keras bridge: every supported family translates with outputs equal to
1e-5, prunes with TFMOT, and comes back as a plain Keras 3 file with its sparsity intact;
what the bridge does not know is refused with the layer named."""

from __future__ import annotations

import pathlib
from typing import Any

import h5py
import keras
import keras3_models as km
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry, pruning_wrapper

from pruning_worker import bridge
from pruning_worker.errors import JobInputError

TOLERANCE = 1e-5
SPARSITY = 0.8


def _leaf_layers(model: Any) -> dict[str, Any]:
    """Non-model layers by name, nested models opened (either Keras version)."""
    found: dict[str, Any] = {}
    for layer in model.layers:
        if isinstance(layer, (keras.Model, tf_keras.Model)):
            found.update(_leaf_layers(layer))
        else:
            found[layer.name] = layer
    return found


def _own(variable: Any) -> str:
    return str(variable.name).rsplit("/", 1)[-1].split(":", 1)[0]


def _prunable_variables(layer: Any) -> list[Any]:
    """The variables TFMOT would prune in a tf_keras layer (RNNs inside Bidirectional too)."""
    if isinstance(layer, tf_keras.layers.Bidirectional):
        return _prunable_variables(layer.forward_layer) + _prunable_variables(layer.backward_layer)
    if not layer.trainable_weights or not prune_registry.PruneRegistry.supports(layer):
        return []
    return list(prune_registry.PruneRegistry.make_prunable(layer).get_prunable_weights())


def _keyed(variables: list[Any]) -> dict[tuple[str, int], Any]:
    """Variables keyed by (own name, occurrence), e.g. the backward LSTM's kernel is (kernel, 1)."""
    seen: dict[str, int] = {}
    keyed = {}
    for v in variables:
        name = _own(v)
        keyed[(name, seen.get(name, 0))] = v
        seen[name] = seen.get(name, 0) + 1
    return keyed


def _zero_smallest(model2: Any, fraction: float) -> dict[str, list[tuple[str, int]]]:
    """Simulated pruning: zeroes the smallest ``fraction`` of every prunable kernel."""
    pruned: dict[str, list[tuple[str, int]]] = {}
    for name, layer in _leaf_layers(model2).items():
        prunable = {id(v) for v in _prunable_variables(layer)}
        for key, v in _keyed(layer.weights).items():
            if id(v) not in prunable:
                continue
            value = v.numpy()
            order = np.argsort(np.abs(value), axis=None)
            flat = value.reshape(-1)
            flat[order[: round(fraction * value.size)]] = 0.0
            v.assign(flat.reshape(value.shape))
            pruned.setdefault(name, []).append(key)
    return pruned


def _sparsity(model: Any, keys: dict[str, list[tuple[str, int]]]) -> dict[str, tuple[float, int]]:
    """Per layer: (fraction of zeros, size) over the variables ``keys`` names."""
    layers = _leaf_layers(model)
    out = {}
    for name, wanted in keys.items():
        variables = _keyed(layers[name].weights)
        values = [np.asarray(variables[key]) for key in wanted]
        size = sum(v.size for v in values)
        out[name] = (1.0 - sum(int(np.count_nonzero(v)) for v in values) / size, size)
    return out


def _load3(tmp_path: pathlib.Path, name: str) -> tuple[Any, pathlib.Path]:
    path, _ = km.save(name, tmp_path / f"{name}.keras")
    work = tmp_path / "work"
    work.mkdir()
    return bridge.load_keras3(path, work, 10**9), path


def _tfmot_prune(model2: Any, probe: list[np.ndarray]) -> tuple[Any, list[str]]:
    """The pipeline's way: every prunable layer wrapped via clone_model, one pruning step (what
    fit with UpdatePruningStep does, run eagerly: it is much faster), then strip_pruning."""
    schedule = tfmot.sparsity.keras.ConstantSparsity(SPARSITY, begin_step=0, frequency=1)
    chosen = [
        layer.name for layer in model2.layers
        if layer.trainable_weights and prune_registry.PruneRegistry.supports(layer)
    ]  # fmt: skip

    def clone(layer: Any) -> Any:
        if layer.name in chosen:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    pruned = tf_keras.models.clone_model(model2, clone_function=clone)
    for layer in pruned.layers:
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
            layer.pruning_step.assign(0)
    pruned(probe if len(probe) > 1 else probe[0], training=True)  # the masks update in training mode only
    return tfmot.sparsity.keras.strip_pruning(pruned), chosen


@pytest.mark.parametrize("name", list(km.BUILDERS))
def test_family(tmp_path, name):
    """save -> load -> tf_keras (equal outputs) -> 80% of kernels zeroed -> a Keras 3 file that
    plain Keras 3 loads, with the tf_keras outputs and the sparsity; then TFMOT's
    prune_low_magnitude + strip_pruning on the translated model (nested models flattened,
    as TFMOT wraps only the outer model's layers), and back to Keras 3 again."""
    model3, _ = _load3(tmp_path, name)
    model2 = bridge.to_tf_keras(model3)
    operations = {op.name for op in getattr(model3, "_operations", []) if not isinstance(op, keras.layers.Layer)}
    # and the tf_keras layers an Activation("hard_silu") is made of, before the one of its name
    operations |= {
        f"{layer.name}{part}" for layer in model3.layers for part in ("_hard_sigmoid_scale", "_hard_sigmoid")
    }
    translated = [layer.name for layer in model2.layers if layer.name not in operations]
    assert translated == [layer.name for layer in model3.layers]  # and arithmetic operations became layers
    probe = bridge.make_probe(model3)
    if name in (
        "rnn",
        "masked_sequence",
        "masked_residual",
        "recurrent_attention",
    ):  # padded sequences: the mask must reach every RNN
        probe[0][0, -3:] = 0
    assert bridge.check_equivalence(model3, model2, probe) <= TOLERANCE

    fresh = model2.get_weights()
    pruned = _zero_smallest(model2, SPARSITY)
    assert pruned, "no prunable kernel"
    back = bridge.to_keras3(model2, like=model3)
    keras.saving.save_model(back, tmp_path / "back.keras")
    loaded = keras.saving.load_model(tmp_path / "back.keras")
    assert bridge.keras_version_of(tmp_path / "back.keras") == 3
    assert bridge.check_equivalence(loaded, model2, probe) <= TOLERANCE
    total = zeros = 0.0
    for layer, (sparsity, size) in _sparsity(loaded, pruned).items():
        assert abs(sparsity - SPARSITY) <= 0.01 + 0.5 / size, (layer, sparsity)
        total, zeros = total + size, zeros + sparsity * size
    assert abs(zeros / total - SPARSITY) <= 0.01

    # TFMOT, on the unpruned weights (so that its own masks show)
    model2.set_weights(fresh)
    flat = bridge.to_tf_keras(model3, flatten_nested=True) if name in ("nested", "hard_activations") else model2
    assert not any(isinstance(layer, tf_keras.Model) for layer in flat.layers)
    stripped, chosen = _tfmot_prune(flat, probe)
    assert [layer.name for layer in stripped.layers] == [layer.name for layer in flat.layers]
    layers = _leaf_layers(stripped)
    for layer_name in chosen:
        variables = _prunable_variables(layers[layer_name])
        size = sum(int(np.prod(v.shape)) for v in variables)
        if size:
            zeros = sum(int(np.sum(v.numpy() == 0)) for v in variables)
            assert abs(zeros / size - SPARSITY) <= 0.01 + 1.0 / size, layer_name
    back = bridge.to_keras3(stripped, like=model3)
    assert bridge.check_equivalence(back, stripped, probe) <= TOLERANCE


def test_nested_models_without_flattening_keep_their_structure():
    """Unflattened, the nested models stay models: TFMOT's clone_function only sees the outer
    layers, so the Dense layers inside them would go unpruned."""
    model3 = km.build("nested")
    model2 = bridge.to_tf_keras(model3)
    assert {type(layer).__name__ for layer in model2.layers} >= {"Sequential", "Functional"}
    flat = bridge.to_tf_keras(model3, flatten_nested=True)
    names = [layer.name for layer in flat.layers]
    assert {"enc_dense1", "enc_dense2", "shared", "head_dense", "similarity"} <= set(names)
    assert names.count("shared") == 1  # the shared layer stays one layer, called twice
    probe = bridge.make_probe(model3)
    assert bridge.check_equivalence(model3, flat, probe) <= TOLERANCE


def test_sequential_inside_sequential_and_dict_inputs():
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="inner_dense")], name="inner")
    outer = km.randomise(keras.Sequential([keras.Input((5,)), inner, keras.layers.Dense(2, name="top")]))
    probe = bridge.make_probe(outer)
    for flatten in (False, True):
        model2 = bridge.to_tf_keras(outer, flatten_nested=flatten)
        assert bridge.check_equivalence(outer, model2, probe) <= TOLERANCE
        assert bridge.check_equivalence(bridge.to_keras3(model2, like=outer), model2, probe) <= TOLERANCE
    assert isinstance(bridge.to_tf_keras(outer).layers[0], tf_keras.Sequential)

    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    out = keras.layers.Dense(1, name="out")(keras.layers.Concatenate()([a, b]))
    model3 = km.randomise(keras.Model({"b": b, "a": a}, out))
    model2 = bridge.to_tf_keras(model3)
    assert bridge.check_equivalence(model3, model2, bridge.make_probe(model3)) <= TOLERANCE


def test_default_gru_two_bias_rows():
    """The rnn family's GRU is reset_after=False; the default (True) has a (2, 3 units) bias."""
    model3 = km.randomise(keras.Sequential([keras.Input((5, 3)), keras.layers.GRU(4, name="gru")]))
    model2 = bridge.to_tf_keras(model3)
    assert tuple(model2.get_layer("gru").weights[2].shape) == (2, 12)
    assert bridge.check_equivalence(model3, model2) <= TOLERANCE


def test_to_keras3_wants_the_wrappers_stripped():
    model3 = km.build("two_in_two_out")
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(bridge.to_tf_keras(model3))
    with pytest.raises(bridge.BridgeError, match="strip TFMOT's wrappers first"):
        bridge.to_keras3(wrapped, like=model3)


def test_every_supported_class_is_covered():
    found: set[str] = set()

    def walk(layers: list[Any]) -> None:
        for layer in layers:
            found.add(type(layer).__name__)
            if isinstance(layer, keras.Model):
                walk(layer._layers if isinstance(layer, keras.Sequential) else layer.layers)
            if isinstance(layer, keras.layers.Bidirectional):
                walk([layer.forward_layer])
            if isinstance(layer, keras.layers.TimeDistributed):
                walk([layer.layer])

    for name in km.BUILDERS:
        model = km.BUILDERS[name]()
        walk(model._layers if isinstance(model, keras.Sequential) else model.layers)
    assert bridge.SUPPORTED - found == set()
    assert frozenset(bridge.SUPPORTED_LAYERS) == bridge.SUPPORTED


@pytest.mark.parametrize("activation", ["linear", "relu", "sigmoid", "tanh", "softmax", "softplus", "softsign",
                                        "elu", "selu", "exponential", "silu", "gelu", "mish"])  # fmt: skip
def test_translated_activations_compute_the_same(activation):
    model3 = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation=activation, name="d")])
    model2 = bridge.to_tf_keras(model3)
    probe = [bridge.make_probe(model3, batch=4)[0] * 3.0]
    assert bridge.check_equivalence(model3, model2, probe) <= TOLERANCE


# --- refusals -------------------------------------------------------------------------------


class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


class MyDense(keras.layers.Dense):
    pass


def _functional(layer: Any) -> Any:
    if isinstance(layer, keras.layers.MultiHeadAttention):  # self-attention over a sequence
        inputs = keras.Input((3, 4))
        return keras.Model(inputs, keras.layers.Dense(2)(layer(inputs, inputs)))
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))


@pytest.mark.parametrize(
    ("layer", "name", "class_name"),
    [
        (lambda: Doubler(name="doubler"), "doubler", "Doubler"),
        (lambda: MyDense(3, name="mine"), "mine", "MyDense"),
        (lambda: keras.layers.SpectralNormalization(keras.layers.Dense(4), name="sn"), "sn", "SpectralNormalization"),
        (lambda: keras.layers.RMSNormalization(name="unit"), "unit", "RMSNormalization"),
    ],
)
def test_layers_outside_the_list_are_refused(layer, name, class_name):
    with pytest.raises(bridge.UnsupportedLayer, match=rf"'{name}' of class {class_name}\b") as info:
        bridge.to_tf_keras(_functional(layer()))
    assert (info.value.layer, info.value.class_name) == (name, class_name)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "inner",
    [
        lambda: keras.layers.Bidirectional(keras.layers.LSTM(2)),
        lambda: keras.Sequential([keras.layers.Dense(2)]),
    ],
)
def test_a_time_distributed_model_or_wrapper_is_refused(inner):
    inputs = keras.Input((3, 4, 1))
    x = keras.layers.TimeDistributed(inner(), name="clip")(inputs)
    with pytest.raises(bridge.UnsupportedLayer, match="'clip' of class TimeDistributed: wraps"):
        bridge.to_tf_keras(keras.Model(inputs, keras.layers.Flatten()(x)))


def test_attention_over_a_padding_mask_is_refused():
    tokens = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    x = keras.layers.MultiHeadAttention(num_heads=1, key_dim=2, name="attend")(x, x)
    model = keras.Model(tokens, keras.layers.GlobalAveragePooling1D()(x))
    with pytest.raises(bridge.UnsupportedLayer, match="'attend' of class MultiHeadAttention: attends over a padding"):
        bridge.to_tf_keras(model)


def test_operations_that_are_not_layers_are_refused():
    inputs = keras.Input((4,))
    # an op named like the Add layer, broadcasting (3) against (1): no layer does the same
    x = keras.ops.add(keras.layers.Dense(3)(inputs), keras.layers.Dense(1)(inputs))
    with pytest.raises(bridge.UnsupportedLayer, match="of class Add: is not a layer"):
        bridge.to_tf_keras(keras.Model(inputs, x))


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (lambda: keras.layers.Dense(3, activation="hard_sigmoid", name="hs"), "'hs' of class Dense: the activation"),
        (lambda: keras.layers.Dense(3, lora_rank=2, name="lora"), "'lora' of class Dense: option lora_rank=2"),
        (lambda: keras.layers.MultiHeadAttention(1, 2, use_gate=True, name="gate"),
         "'gate' of class MultiHeadAttention: option use_gate=True"),
        (lambda: keras.layers.MultiHeadAttention(1, 2, sliding_window=2, name="window"),
         "'window' of class MultiHeadAttention: option sliding_window=2"),
        (lambda: keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(input_axes=[0]),
                                    name="axes"), "'axes' of class Dense: initializer GlorotUniform: option input_axes"),
    ],
)  # fmt: skip
def test_options_without_tf_keras_equivalent_are_refused(layer, match):
    with pytest.raises(bridge.UnsupportedLayer, match=match):
        bridge.to_tf_keras(_functional(layer()))


# --- files ----------------------------------------------------------------------------------


def test_keras_version_of_keras3_files(tmp_path):
    path, model = km.save("two_in_two_out", tmp_path / "m.keras")
    assert bridge.keras_version_of(path) == 3
    keras.saving.save_model(model, tmp_path / "m.h5")
    assert bridge.keras_version_of(tmp_path / "m.h5") == 3
    blob = tmp_path / "blob"  # the artifact store names files by hash, without a suffix
    blob.write_bytes(path.read_bytes())
    assert bridge.keras_version_of(blob) == 3


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_version_of_tf_keras_files(tmp_path, suffix):
    import models

    assert bridge.keras_version_of(models.small_model(tmp_path / f"m{suffix}")) == 2


def test_keras_version_of_refuses_oversized_records(tmp_path):
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "3." + "0" * 1000
    with pytest.raises(ValueError, match="over the limit"):
        bridge.keras_version_of(path, limit=100)
    (tmp_path / "text").write_text("not a model")
    with pytest.raises(ValueError, match="not a Keras model"):
        bridge.keras_version_of(tmp_path / "text")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_load_keras3_from_a_suffixless_blob(tmp_path, suffix):
    path, model = km.save("mnist_cnn", tmp_path / f"m{suffix}")
    blob = tmp_path / "blob"
    blob.write_bytes(path.read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    loaded = bridge.load_keras3(blob, work, 10**9)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    probe = bridge.make_probe(model)
    assert np.array_equal(np.asarray(loaded(probe[0])), np.asarray(model(probe[0])))
    assert bridge.check_equivalence(loaded, bridge.to_tf_keras(loaded), probe) <= TOLERANCE


def test_load_keras3_bounds_the_archive(tmp_path):
    path, _ = km.save("mnist_cnn", tmp_path / "m.keras")
    with pytest.raises(JobInputError, match="over the limit"):
        bridge.load_keras3(path, tmp_path, 1000)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        pytest.param(lambda L: L.DepthwiseConv2D(3), (8, 8, 2), id="DepthwiseConv2D"),
        pytest.param(lambda L: L.SeparableConv2D(4, 3), (8, 8, 2), id="SeparableConv2D"),
        pytest.param(lambda L: L.Conv2DTranspose(4, 3), (8, 8, 2), id="Conv2DTranspose"),
        pytest.param(lambda L: L.DepthwiseConv1D(3), (8, 2), id="DepthwiseConv1D"),
        pytest.param(lambda L: L.SeparableConv1D(4, 3), (8, 2), id="SeparableConv1D"),
        pytest.param(lambda L: L.Conv1DTranspose(4, 3), (8, 2), id="Conv1DTranspose"),
    ],
)
def test_a_tf_keras_model_comes_back_as_keras3_without_a_keras3_original(tmp_path, make, shape):
    """What a tf_keras upload exported as Keras 3, or a structured job's model, goes through:
    Keras 3's loader of Keras 2 files, which refuses tf_keras options it does not take."""
    import tf_keras

    from pruning_worker.bridge import check_equivalence
    from pruning_worker.export import as_keras3

    inputs = tf_keras.Input(shape)
    made = make(tf_keras.layers)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(tf_keras.layers.Flatten()(made(inputs))))
    model3 = as_keras3(model, None, tmp_path)
    assert type(model3.layers[1]).__name__ == type(made).__name__
    assert check_equivalence(model3, model) <= 1e-5


def test_an_op_the_device_cannot_run_fails_its_step_with_the_op_s_own_message():
    """A channels_first Conv2D on a CPU without oneDNN's kernels (the worker turns them on;
    TensorFlow's own default is off on CPUs without AVX-512): the job says why, where it said
    'Exception encountered when calling Conv2D.call()' as INTERNAL."""
    import tensorflow as tf

    from pruning_worker import tferrors
    from pruning_worker.errors import JobInputError

    message = (  # TensorFlow's, as a channels_first model raised it here at load
        "Exception encountered when calling Conv2D.call().\n\n\x1b[1m{{function_node "
        "__wrapped__Conv2D_device_/job:localhost/replica:0/task:0/device:CPU:0}} The Conv2D op currently only "
        "supports the NHWC tensor format on the CPU. The op was given the format: NCHW [Op:Conv2D]\x1b[0m\n\n"
        "Arguments received by Conv2D.call():\n  \u2022 inputs=tf.Tensor(shape=(2, 1, 28, 28), dtype=float32)"
    )
    with pytest.raises(JobInputError) as failed, tferrors.step("loading the model"):
        raise tf.errors.UnimplementedError(None, None, message)
    assert str(failed.value) == (
        "loading the model failed on this model, data and spec: The Conv2D op currently only supports the NHWC "
        "tensor format on the CPU. The op was given the format: NCHW"
    )


def test_a_channels_first_model_loads_on_a_cpu_worker(tmp_path):
    """With oneDNN's kernels on (the worker's default), NCHW convolutions run on any x86 CPU."""
    from pruning_worker import safe_load

    inputs = keras.Input((1, 12, 12))
    conv = keras.layers.Conv2D(4, 3, data_format="channels_first")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(conv))
    path = tmp_path / "nchw.keras"
    keras.Model(inputs, outputs).save(path)
    loaded = safe_load.load(path, tmp_path, 1 << 30)
    assert loaded.keras_version == 3 and loaded.conversion_diff <= TOLERANCE


def test_a_model_with_large_outputs_is_judged_relative_to_their_scale(tmp_path):
    """A regression model whose outputs reach 1e4 differed from its translation by about 1e-2
    (float32 rounding, the two Keras versions ordering some sums differently) and failed as
    "differs from it"; now it loads, and its Keras 3 twin is accepted."""
    from pruning_worker import safe_load
    from pruning_worker.export import keras3_twin

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.Dense(64, activation="relu")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    for weight in model.weights:
        if weight.path.endswith("kernel"):
            weight.assign(weight.numpy() * 30)
    path = tmp_path / "regression.keras"
    model.save(path)

    loaded = safe_load.load(path, tmp_path, 1 << 30)
    diff, relative = bridge.compare(loaded.original, loaded.model)
    assert diff == loaded.conversion_diff and relative <= safe_load.CONVERSION_TOLERANCE
    keras3_twin(loaded.model, loaded.original, tmp_path)  # raises if judged another model

    other = bridge.to_tf_keras(loaded.original)
    other.layers[-2].activation = tf_keras.activations.elu  # computes something else
    assert safe_load.conversion_refused(*bridge.compare(loaded.original, other))


def test_each_output_is_judged_by_its_own_scale():
    """One scale for all (the largest output anywhere) let a head of values near 1e4 widen a
    softmax head's tolerance to 1: a wrong softmax passed."""
    from pruning_worker.safe_load import conversion_refused

    regression = np.array([[12_000.0], [9_000.0]])
    softmax = np.array([[0.9, 0.1], [0.2, 0.8]])
    # the large head off by float32's rounding, the small one by nothing: the same model
    assert not conversion_refused(*bridge.relative_difference([regression, softmax], [regression + 0.01, softmax]))
    # the small head off by 0.3: another model, however large the other head
    diff, relative = bridge.relative_difference([regression, softmax], [regression, softmax[:, ::-1]])
    assert diff == pytest.approx(0.8) and conversion_refused(diff, relative)
    # infinities where the other has numbers, or NaN against a number: another model
    inf = np.array([[np.inf], [1.0]])
    assert bridge.relative_difference([inf], [np.array([[5.0], [1.0]])]) == (np.inf, np.inf)
    assert bridge.relative_difference([inf], [inf.copy()]) == (0.0, 0.0)  # the same infinity: the same output
    assert bridge.relative_difference([np.array([np.nan])], [np.array([0.0])]) == (np.inf, np.inf)


def test_augmentation_layers_augment_in_training_only():
    """Keras 3 records ``training=True`` (its call signature's default) for its preprocessing
    layers, and the model's own flag overrides it: translated, they follow the model too."""
    model3 = km.build("augmented_image")
    model2 = bridge.to_tf_keras(model3)
    probe = [np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 3)).astype("float32")]
    assert bridge.check_equivalence(model3, model2, probe) <= TOLERANCE
    inference = model2(probe[0], training=False).numpy()
    assert not np.allclose(model2(probe[0], training=True).numpy(), inference)


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        # Keras 3's RandomCrop leaves the image uncropped in inference, tf_keras crops its centre
        (lambda: keras.layers.RandomCrop(4, 4, name="rc"), "'rc' of class RandomCrop"),
        (lambda: keras.layers.Resizing(4, 6, pad_to_aspect_ratio=True, name="pad"),
         "'pad' of class Resizing: option pad_to_aspect_ratio=True"),
        (lambda: keras.layers.RandomContrast(0.1, value_range=(0, 1), name="rc01"),
         "'rc01' of class RandomContrast: option value_range"),
    ],
)  # fmt: skip
def test_image_layers_without_a_tf_keras_equivalent_are_refused(layer, match):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(layer()(inputs))
    with pytest.raises(bridge.UnsupportedLayer, match=match):
        bridge.to_tf_keras(keras.Model(inputs, keras.layers.Dense(2)(x)))


def test_a_layer_called_with_training_true_against_its_default_is_refused():
    inputs = keras.Input((4,))
    x = keras.layers.Dropout(0.5, name="mc")(keras.layers.Dense(4)(inputs), training=True)
    with pytest.raises(bridge.BridgeError, match="'mc' is called with training=True"):
        bridge.to_tf_keras(keras.Model(inputs, keras.layers.Dense(2)(x)))
