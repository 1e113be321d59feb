"""The preflight of uploaded models, read from the files alone: Keras version, inputs,
outputs, layers with parameters, and refusal of Keras 3 layers the service cannot translate."""

from __future__ import annotations

import json
import pathlib
import re
import zipfile

import pytest

from pruning_core import modelcheck, preflight, validation
from pruning_core.modelcheck import ModelRejected


def _keras3_cnn(path):
    import keras

    inputs = keras.Input((28, 28), name="pixels")
    x = keras.layers.Reshape((28, 28, 1))(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, name="hidden")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_model_is_recognised_and_summarised(tmp_path, suffix):
    import keras

    path = tmp_path / f"m{suffix}"
    if suffix == ".keras":
        _keras3_cnn(path)
    else:
        keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, name="logits")]).save(
            path
        )
    info = modelcheck.inspect_model(path, 10**9)
    summary = info.summary
    assert info.keras_version == 3 and summary.keras_version == 3
    assert summary.keras_version_string.startswith("3.")
    assert [list(i.shape) for i in summary.inputs] == [[28, 28]]
    assert [list(o.shape) for o in summary.outputs] == [[10]]
    params = {layer.name: layer.params for layer in summary.layers}
    if suffix == ".keras":
        assert params["conv"] == 3 * 3 * 4 + 4 and params["hidden"] == 26 * 26 * 4 * 16 + 16
        assert params["logits"] == 16 * 10 + 10
    else:
        assert params["logits"] == 28 * 28 * 10 + 10
    assert summary.total_params == sum(params.values())
    prunable = {layer.name for layer in summary.layers if layer.prunable}
    assert "logits" in prunable and not any(layer.class_name == "Flatten" for layer in summary.layers if layer.prunable)
    assert all(layer.convertible for layer in summary.layers)
    assert not {"Sequential", "Functional"} & {layer.class_name for layer in summary.layers}  # not the model itself


def test_a_layer_selection_naming_no_layer_lists_the_layers_not_the_model(tmp_path):
    import keras

    from pruning_client import job_spec, polynomial_decay

    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")], name="seq").save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
    spec = job_spec("a" * 64, schedule=polynomial_decay(0.5, 0.8), include_layers=["dense"])
    found = dict(validation.validate_against_model(spec, info.layers))
    assert found["spec.pruning.layers.include_names"] == "the model has no layers ['dense']; it has ['d']"
    assert [layer.class_name for layer in info.summary.layers] == ["InputLayer", "Dense"]


def test_tf_keras_model_is_version_2(tmp_path):
    import models

    info = modelcheck.inspect_model(models.small_model(tmp_path / "m.keras"), 10**9)
    assert info.keras_version == 2 and info.summary.keras_version == 2
    assert {layer.name: layer.params for layer in info.summary.layers}["logits"] == 32 * 4 + 4


def test_keras3_layer_outside_the_bridge_is_refused_by_name(tmp_path):
    import keras

    inputs = keras.Input((8,))
    x = keras.layers.Reshape((4, 2, 1))(inputs)
    x = keras.layers.Flatten()(keras.layers.RandomCrop(2, 2, name="noisy")(x))
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(tmp_path / "m.keras")
    with pytest.raises(ModelRejected, match=r"'noisy' \(RandomCrop\)"):
        modelcheck.inspect_model(tmp_path / "m.keras", 10**9)


def test_keras3_custom_layer_is_refused(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="user")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((8,))
    keras.Model(inputs, keras.layers.Dense(2)(Twice(name="twice")(inputs))).save(tmp_path / "m.keras")
    with pytest.raises(ModelRejected, match="Twice"):
        modelcheck.inspect_model(tmp_path / "m.keras", 10**9)


def test_oversized_config_is_refused_as_it_is_read(tmp_path, monkeypatch):
    path = _keras3_cnn(tmp_path / "m.keras")
    with zipfile.ZipFile(path) as archive:
        size = archive.getinfo("config.json").file_size
        json.loads(archive.read("config.json"))
    monkeypatch.setattr(modelcheck, "MAX_CONFIG_BYTES", size - 1)
    with pytest.raises(ModelRejected, match="config.json"):
        modelcheck.inspect_model(path, 10**9)


def test_a_model_with_dict_outputs_names_its_outputs_by_the_keys(tmp_path):
    import keras

    inputs = keras.Input((6,), name="features")
    x = keras.layers.Dense(8, name="trunk")(inputs)
    outputs = {"main": keras.layers.Dense(3, name="main_head")(x), "extra": keras.layers.Dense(2, name="extra_head")(x)}
    keras.Model(inputs, outputs).save(tmp_path / "m.keras")
    summary = modelcheck.inspect_model(tmp_path / "m.keras", 10**9).summary
    assert sorted((o.name, list(o.shape)) for o in summary.outputs) == [("extra", [2]), ("main", [3])]


@pytest.mark.parametrize(
    ("layer", "cause"),
    [
        ("dense_relu6", "the activation 'relu6' is not translated"),
        ("activation_relu6", "the activation 'relu6' is not translated"),
        ("layernorm_rms", "rms_scaling=True"),
        ("lora", "lora_rank=2"),
        ("clip_of_models", "wraps 'Sequential'"),
        ("clip_of_bidirectional", "wraps 'Bidirectional'"),
        ("gated_attention", "use_gate=True"),
        ("windowed_attention", "sliding_window=2"),
        ("padded_resize", "pad_to_aspect_ratio=True"),
        ("antialiased_resize", "antialias=True"),
        ("unit_contrast", "value_range=[0, 1]"),
    ],
)
def test_keras3_options_the_bridge_refuses_are_refused_at_upload(tmp_path, layer, cause):
    import keras

    inputs = keras.Input((6,))
    if layer in ("padded_resize", "antialiased_resize", "unit_contrast"):
        image = keras.Input((8, 8, 3))
        made = {
            "padded_resize": lambda: keras.layers.Resizing(4, 6, pad_to_aspect_ratio=True, name=layer),
            "antialiased_resize": lambda: keras.layers.Resizing(4, 4, antialias=True, name=layer),
            "unit_contrast": lambda: keras.layers.RandomContrast(0.1, value_range=(0, 1), name=layer),
        }[layer]()
        keras.Model(image, made(image)).save(tmp_path / "m.keras")
        with pytest.raises(ModelRejected, match=rf"layer '{layer}' of class \w+: .*{re.escape(cause)}"):
            modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
        from pruning_worker import bridge

        with pytest.raises(bridge.UnsupportedLayer, match=rf"'{layer}'"):
            bridge.to_tf_keras(keras.Model(image, made(image)))
        return
    if layer == "clip_of_models":
        frames = keras.Input((3, 6))
        inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
        keras.Model(frames, keras.layers.TimeDistributed(inner, name=layer)(frames)).save(tmp_path / "m.keras")
    elif layer == "clip_of_bidirectional":
        frames = keras.Input((3, 4, 6))
        inner = keras.layers.Bidirectional(keras.layers.LSTM(2))
        keras.Model(frames, keras.layers.TimeDistributed(inner, name=layer)(frames)).save(tmp_path / "m.keras")
    elif layer.endswith("_attention"):
        sequence = keras.Input((3, 6))
        options = {"use_gate": True} if layer == "gated_attention" else {"sliding_window": 2}
        attention = keras.layers.MultiHeadAttention(1, 2, name=layer, **options)
        keras.Model(sequence, attention(sequence, sequence)).save(tmp_path / "m.keras")
        with pytest.raises(ModelRejected, match=rf"layer '{layer}' of class MultiHeadAttention: .*{re.escape(cause)}"):
            modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
        return
    if layer.startswith("clip_"):
        with pytest.raises(ModelRejected, match=rf"layer '{layer}' of class TimeDistributed: .*{re.escape(cause)}"):
            modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
        return
    if layer == "dense_relu6":
        x = keras.layers.Dense(4, activation="relu6", name=layer)(inputs)
    elif layer == "activation_relu6":
        x = keras.layers.Activation("relu6", name=layer)(keras.layers.Dense(4)(inputs))
    elif layer == "layernorm_rms":
        x = keras.layers.LayerNormalization(rms_scaling=True, name=layer)(inputs)
    else:
        dense = keras.layers.Dense(4, name=layer)
        x = dense(inputs)
        dense.enable_lora(2)
    keras.Model(inputs, x).save(tmp_path / "m.keras")
    with pytest.raises(ModelRejected, match=rf"layer '{layer}' of class \w+: .*{re.escape(cause)}"):
        modelcheck.inspect_model(tmp_path / "m.keras", 10**9)


def test_the_preflight_and_the_bridge_refuse_the_same_options():
    """Each option the preflight refuses, the bridge refuses too (and translates the rest)."""
    import keras

    from pruning_worker import bridge

    inputs = keras.Input((6,))
    for activation in ["relu6", "hard_sigmoid", *preflight.KERAS3_ACTIVATIONS]:
        model = keras.Model(inputs, keras.layers.Dense(4, activation=activation, name="d")(inputs))
        refused = preflight.option_problem("Dense", model.get_layer("d").get_config()) is not None
        try:
            bridge.to_tf_keras(model)
            translated = True
        except bridge.BridgeError:
            translated = False
        assert refused != translated, activation


def test_a_refused_class_says_whether_it_is_a_keras_one_and_names_the_layer(tmp_path):
    import keras

    inputs = keras.Input((4, 8))
    normalized = keras.layers.RMSNormalization(name="rms")(inputs)
    keras.Model(inputs, normalized).save(tmp_path / "rms.keras")
    with pytest.raises(ModelRejected, match=r"layer 'rms' \(RMSNormalization\), a Keras class the service"):
        modelcheck.inspect_model(tmp_path / "rms.keras", 10**9)

    @keras.saving.register_keras_serializable(package="mine")
    class Doubled(keras.layers.Layer):
        def call(self, x):
            return x * 2

    keras.Sequential([keras.Input((3,)), Doubled(name="twice")]).save(tmp_path / "custom.keras")
    with pytest.raises(ModelRejected, match=r"twice.*not a built-in Keras class|custom object"):
        modelcheck.inspect_model(tmp_path / "custom.keras", 10**9)


@pytest.mark.parametrize(
    ("operation", "instead"),
    [
        ("broadcast add", "keras.layers.Add"),
        ("number / tensor", "use a layer"),
        ("concatenate", "keras.layers.Concatenate"),
        ("reshape", "keras.layers.Reshape"),
        ("softmax", "keras.layers.Softmax"),
    ],
)
def test_keras_ops_calls_and_operators_are_refused_at_upload_naming_the_layer_to_use(tmp_path, operation, instead):
    """A Keras 3 file records ``keras.ops.concatenate`` or ``a + b`` as an operation whose class
    name may be a layer's (Add, Concatenate, ...); the bridge translates only arithmetic of two
    tensors of one shape, or of a float tensor and a number."""
    import keras

    inputs = keras.Input((8,))
    a, b = keras.layers.Dense(8, name="a")(inputs), keras.layers.Dense(8, name="b")(inputs)
    x = {
        "broadcast add": lambda: a + keras.layers.Dense(1, name="c")(inputs),
        "number / tensor": lambda: 4.0 / a,
        "concatenate": lambda: keras.ops.concatenate([a, b], axis=-1),
        "reshape": lambda: keras.layers.Flatten()(keras.ops.reshape(a, (-1, 2, 4))),
        "softmax": lambda: keras.ops.softmax(a),
    }[operation]()
    keras.Model(inputs, keras.layers.Dense(2, name="out")(x)).save(tmp_path / "m.keras")
    with pytest.raises(ModelRejected, match=r"keras\.ops call or an operator") as refused:
        modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
    assert refused.value.field == "model" and instead in str(refused.value)
    assert len(f"model: {refused.value}") <= 200  # the server's default cut of an error's text


def test_arithmetic_on_tensors_is_taken_at_upload(tmp_path):
    """``h + r``, ``a * b``, ``x / 255.0``, ``x - 0.5``, ``2.0 * x``: the bridge makes layers of
    them (Add, Multiply, Subtract, Rescaling), so the upload takes them."""
    import keras

    inputs = keras.Input((8,), dtype="uint8")
    x = inputs / 255.0 - 0.5
    a, b = keras.layers.Dense(8, name="a")(x), keras.layers.Dense(8, name="b")(x)
    h = 2.0 * (a + b) * a - b
    keras.Model(inputs, keras.layers.Dense(2, name="out")(h)).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
    assert info.keras_version == 3


def test_the_mask_operations_of_embedding_and_masking_are_still_taken(tmp_path):
    import keras

    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 4, mask_zero=True, name="emb")(inputs)
    x = keras.layers.LSTM(4, name="lstm")(x)
    keras.Model(inputs, keras.layers.Dense(2, name="out")(x)).save(tmp_path / "m.keras")
    assert ("LSTM", "lstm") in modelcheck.inspect_model(tmp_path / "m.keras", 10**9).layers


def test_the_refusal_of_unconvertible_layers_lists_whole_names_within_an_error_answer():
    with pytest.raises(preflight.Unconvertible) as refused:
        preflight.check_convertible([("Dense", "d"), ("ThresholdedReLU", "gn")])
    text = str(refused.value)
    assert "'gn' (ThresholdedReLU)" in text and len(f"model: {text}") <= 200
    listed = text.split("supported: ", 1)[1].split(", ")
    assert listed[-1].startswith("... (") and all(name in preflight.KERAS3_CONVERTIBLE for name in listed[:-1])
    assert listed[-1].endswith(" more: the README's Keras versions section lists all)"), listed[-1]


def test_the_readme_names_every_keras3_class_a_refusal_leaves_out():
    """A refusal lists what fits in an error answer and points to the README for the rest."""
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Keras versions", 1)[1].split("\n## ", 1)[0]
    translated = section.split("- Translated:", 1)[1].split("TFMOT prunes", 1)[0]
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9]*", translated))
    named = set(words)
    for word in words:  # "Conv1D/2D/3D", "ZeroPadding1D/2D/3D": the family of each
        named |= {word[:-2] + d for d in ("1D", "2D", "3D")} if word.endswith(("1D", "2D", "3D")) else set()
    pooling = {f"{k}Pooling{d}" for k in ("Max", "Average", "GlobalMax", "GlobalAverage") for d in ("1D", "2D", "3D")}
    if "pooling" in translated and "1D/2D/3D" in translated:
        named |= pooling
    missing = sorted(preflight.KERAS3_CONVERTIBLE - named - {"Functional", "Model"})
    assert not missing, f"the README's Keras versions section does not name {missing}"


def test_frozen_and_wrapped_layers_are_not_prunable_in_the_summary(tmp_path):
    """The worker prunes trainable weights only (a frozen layer, or one in a frozen nested
    model, stays whole), and TFMOT never prunes the RNNs inside a Bidirectional."""
    import keras

    inner = keras.Input((6,))
    backbone = keras.Model(inner, keras.layers.Dense(8, name="bb_fc")(inner), name="backbone")
    backbone.trainable = False
    sequence, vector = keras.Input((5, 6), name="sequence"), keras.Input((6,), name="vector")
    seq = keras.layers.Bidirectional(keras.layers.LSTM(4, name="lstm"), name="bi")(sequence)
    flat = keras.layers.Dense(8, trainable=False, name="frozen_fc")(vector)
    x = keras.layers.Concatenate(name="cat")([seq, flat, backbone(vector)])
    keras.Model([sequence, vector], keras.layers.Dense(2, name="out")(x)).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
    assert {layer.name for layer in info.summary.layers if layer.prunable} == {"out"}
    assert info.left_whole == {
        "bb_fc": "frozen", "frozen_fc": "frozen", "forward_lstm": "wrapped", "backward_lstm": "wrapped"
    }  # fmt: skip
    # the summary carries each reason, and inspect shows it in the prunable column
    assert {x.name: x.left_whole for x in info.summary.layers if x.left_whole} == info.left_whole
    from pruning_client.cli import format_summary
    from pruning_client.results import ModelSummary

    rows = {
        line.split()[0]: line for line in format_summary(ModelSummary.from_proto(info.summary)).splitlines() if line
    }
    assert "no (frozen)" in rows["frozen_fc"] and "no (wrapped)" in rows["forward_lstm"]
    assert " yes " in rows["out"] and "no (" not in rows["cat"]


@pytest.mark.parametrize("keras_version", [2, 3])
def test_layers_in_mixed_precision_are_not_prunable_in_the_summary(tmp_path, keras_version):
    """A model saved under the mixed_float16 global policy: its layers, not the model itself nor
    its input, are listed in mixed precision, and its Dense is shown left whole for it (inspect
    showed it prunable, then the dry run refused the model)."""
    if keras_version == 3:
        import keras
    else:
        import tf_keras as keras
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layers = [keras.Input((4, 4)), keras.layers.Flatten(name="flat"), keras.layers.Dense(3)]
        model = keras.Sequential(layers, name="mp")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.save(tmp_path / "mp.keras")
    info = modelcheck.inspect_model(tmp_path / "mp.keras", 10**9)
    dense = model.layers[-1].name
    assert info.keras_version == keras_version
    assert info.mixed_precision == ["flat", dense]
    assert info.left_whole == {dense: "mixed precision"}
    assert [(x.name, x.prunable) for x in info.summary.layers if x.class_name == "Dense"] == [(dense, False)]


def test_the_layers_of_a_model_nested_in_a_tf_keras_one_are_not_prunable(tmp_path):
    """TFMOT wraps a tf_keras model's own layers, not those of a model inside it."""
    import tf_keras

    inner = tf_keras.Input((6,))
    backbone = tf_keras.Model(inner, tf_keras.layers.Dense(8, name="bb_fc")(inner), name="backbone")
    inputs = tf_keras.Input((6,))
    tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="out")(backbone(inputs))).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
    assert {layer.name for layer in info.summary.layers if layer.prunable} == {"out"}
    assert info.left_whole == {"bb_fc": "nested"}


@pytest.mark.parametrize(
    ("build", "words"),
    [
        ("masked", "padding mask"),  # the merge layer would pass on a mask Keras 3's operation drops
        ("dtypes", "keras.ops call or an operator"),  # int32 + float32: Keras 3 promotes, Add would not
    ],
)
def test_arithmetic_the_bridge_cannot_match_is_refused_at_upload(tmp_path, build, words):
    import keras

    if build == "masked":
        tokens = keras.Input((6,), dtype="int32")
        a = keras.layers.Embedding(20, 4, mask_zero=True, name="e1")(tokens)
        b = keras.layers.Embedding(20, 4, name="e2")(tokens)
        outputs = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling1D()(a + b))
        model = keras.Model(tokens, outputs)
    else:
        ints, floats = keras.Input((4,), dtype="int32"), keras.Input((4,))
        model = keras.Model([ints, floats], keras.layers.Dense(2, name="out")(ints + floats))
    model.save(tmp_path / "m.keras")
    with pytest.raises(ModelRejected, match=words):
        modelcheck.inspect_model(tmp_path / "m.keras", 10**9)


def test_layer_names_shared_across_nesting_are_refused_for_keras3(tmp_path):
    """Pruning opens nested Keras 3 models up: a head named like a layer of its base would be
    two layers of one name (the job failed at load); refused at upload, naming it."""
    import keras

    base_in = keras.Input((6,))
    base = keras.Model(base_in, keras.layers.Dense(8, name="dense")(base_in), name="base")
    inputs = keras.Input((6,))
    keras.Model(inputs, keras.layers.Dense(3, name="dense")(base(inputs))).save(tmp_path / "m.keras")
    with pytest.raises(ModelRejected, match=r"layer names \['dense'\] occur in the model and in a model nested"):
        modelcheck.inspect_model(tmp_path / "m.keras", 10**9)


def test_a_keras3_layer_unfrozen_inside_a_frozen_base_is_pruned(tmp_path):
    """Keras 3 counts each layer's own trainable flag: the last block of a frozen base, unfrozen,
    trains and is pruned (it was shown left whole)."""
    import keras

    base_in = keras.Input((6,))
    h = keras.layers.Dense(8, name="b1")(base_in)
    base = keras.Model(base_in, keras.layers.Dense(8, name="b2")(h), name="base")
    base.trainable = False
    base.get_layer("b2").trainable = True
    inputs = keras.Input((6,))
    keras.Model(inputs, keras.layers.Dense(3, name="head")(base(inputs))).save(tmp_path / "m.keras")
    info = modelcheck.inspect_model(tmp_path / "m.keras", 10**9)
    assert info.left_whole == {"b1": "frozen"}


def test_a_tf_keras_head_named_like_a_layer_of_its_frozen_base_stays_prunable(tmp_path):
    """tf_keras models keep nested models whole, so names may repeat across nesting: the head
    the job prunes is not shown left whole for its namesake in the frozen base."""
    import tf_keras

    base_in = tf_keras.Input((6,))
    base = tf_keras.Model(base_in, tf_keras.layers.Dense(8, name="dense")(base_in), name="base")
    base.trainable = False
    inputs = tf_keras.Input((6,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="dense")(base(inputs)))
    model.save(tmp_path / "m.h5")
    info = modelcheck.inspect_model(tmp_path / "m.h5", 10**9)
    assert "dense" not in info.left_whole
    assert any(layer.name == "dense" and layer.prunable for layer in info.summary.layers)


def test_an_untranslated_activation_says_what_to_use_before_the_list():
    """An error answer is cut at 200 bytes: the advice comes before the list of names."""
    text = preflight.option_problem("Dense", {"activation": "relu6"})
    assert text is not None
    assert text.index("use a ReLU(max_value=6) layer instead") < text.index("(translated: ")
    assert "use a LeakyReLU layer instead" in (preflight.option_problem("Dense", {"activation": "leaky_relu"}) or "")
    # MobileNetV3's hard activations are translated as an Activation layer of their own
    assert "use an Activation('hard_silu') layer after a linear one instead" in (
        preflight.option_problem("Dense", {"activation": "hard_silu"}) or ""
    )
    assert preflight.option_problem("Activation", {"activation": "hard_silu"}) is None


@pytest.mark.parametrize("op", ["convert_to_tensor", "not_equal", "output"])
def test_a_mask_operation_used_on_data_is_refused_at_upload(tmp_path, op):
    """The bridge translates not_equal, any and convert_to_tensor only as the masks Keras 3
    records; used on data they passed the upload and failed the job when it loaded the model."""
    import keras

    inputs = keras.Input((6,))
    if op == "convert_to_tensor":
        outputs = keras.layers.Dense(2)(keras.ops.convert_to_tensor(inputs))
        which = "ConvertToTensor"
    elif op == "not_equal":
        outputs = keras.layers.Dense(2)(keras.ops.any(keras.ops.not_equal(inputs, 0.0), axis=-1, keepdims=True))
        which = "Any"
    else:
        outputs = keras.ops.not_equal(keras.layers.Dense(2)(inputs), 0.0)
        which = "NotEqual"
    keras.Model(inputs, outputs).save(tmp_path / "m.keras")
    with pytest.raises(ModelRejected, match=rf"\({which}\) on data, a keras.ops call"):
        modelcheck.inspect_model(tmp_path / "m.keras", 10**9)


def test_the_masks_keras_3_records_are_still_taken(tmp_path):
    """Embedding(mask_zero), Masking and an attention layer's output mask: all as masks."""
    import sys

    import keras

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import keras3_models as km

    for name in ("masked_sequence", "rnn", "recurrent_attention"):
        path, _ = km.save(name, tmp_path / f"{name}.keras")
        assert modelcheck.inspect_model(path, 10**9).layers
    tokens = keras.Input((5,), dtype="int32")
    x = keras.layers.Masking()(keras.layers.Embedding(10, 4)(tokens))
    keras.Model(tokens, keras.layers.LSTM(2)(x)).save(tmp_path / "masking.keras")
    assert modelcheck.inspect_model(tmp_path / "masking.keras", 10**9).layers
