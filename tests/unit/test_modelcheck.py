import json
import zipfile

import numpy as np
import pytest

from pruning_core import modelcheck
from pruning_core.modelcheck import ModelRejected


def layer(cls, name, **config):
    return {"module": "keras.layers", "class_name": cls, "config": {"name": name, **config}}


def sequential(*layers):
    return {"module": "keras", "class_name": "Sequential", "config": {"name": "m", "layers": list(layers)}}


def test_plain_model_is_accepted_and_described():
    config = sequential(layer("InputLayer", "in", batch_input_shape=[None, 28, 28]), layer("Dense", "d"))
    info = modelcheck.check_model_config(config, "keras")
    assert info.input_shape == [28, 28]
    assert ("Dense", "d") in info.layers


@pytest.mark.parametrize(
    "bad",
    [
        layer("Lambda", "l", function="..."),
        {
            "module": "keras.layers",
            "class_name": "TimeDistributed",
            "config": {"name": "t", "layer": layer("Lambda", "x")},
        },
        {"module": "my_package.layers", "class_name": "Dense", "config": {"name": "d"}},
        layer("MyCustomLayer", "c"),
        {"module": None, "class_name": "Dense", "registered_name": "Custom>Dense", "config": {"name": "d"}},
    ],
)
def test_lambda_and_custom_objects_are_refused(bad):
    with pytest.raises(ModelRejected):
        modelcheck.check_model_config(sequential(layer("Dense", "ok"), bad), "keras")


def test_every_refused_layer_is_named_not_only_the_first():
    """A model with several layers the service refuses is fixed in one go: one violation each
    (it used to name the first only, one upload per layer)."""
    config = sequential(
        layer("Dense", "ok"),
        layer("Lambda", "lam", function="..."),
        layer("MyCustomLayer", "mine"),
        layer("Dense", "also_ok"),
        layer("Lambda", "lam2", function="..."),
    )
    with pytest.raises(ModelRejected) as refused:
        modelcheck.check_model_config(config, "keras")
    problems = [d for f, d in refused.value.violations]
    assert {f for f, _ in refused.value.violations} == {"model"} and len(problems) == 3
    assert "'lam'" in problems[0] and "'mine'" in problems[1] and "'lam2'" in problems[2]
    assert str(refused.value) == problems[0]  # the first, as before, for one-line readers
    assert refused.value.unlisted == 0 and refused.value.total == 3
    # past MAX_LAYER_PROBLEMS they are counted, not kept: a hostile config holds no more memory
    many = sequential(*(layer("Lambda", "same", function="...") for _ in range(modelcheck.MAX_LAYER_PROBLEMS + 30)))
    with pytest.raises(ModelRejected) as refused:
        modelcheck.check_model_config(many, "keras")
    assert len(refused.value.violations) == modelcheck.MAX_LAYER_PROBLEMS  # identical texts each count
    assert refused.value.unlisted == 30 and refused.value.total == modelcheck.MAX_LAYER_PROBLEMS + 30


@pytest.mark.parametrize(
    ("bad", "named"), [(layer("Lambda", "lam", function="..."), "'lam'"), ({"class_name": "Lambda"}, "a Lambda")]
)
def test_a_lambda_layer_is_named(bad, named):
    with pytest.raises(ModelRejected, match=f"{named}.* would run arbitrary code"):
        modelcheck.check_model_config(sequential(layer("Dense", "ok"), bad), "keras")


@pytest.mark.parametrize("name", ["dénse", "a b", "_under", "-dash", "d\u0000"])
def test_layer_names_tensorflow_cannot_scope_are_refused(name):
    with pytest.raises(ModelRejected, match="cannot name a TensorFlow scope"):
        modelcheck.check_model_config(sequential(layer("Dense", "ok"), layer("Dense", name)), "keras")


@pytest.mark.parametrize("name", ["dense_1", "Conv2D.3", "block/conv", "x>y-z", "7"])
def test_layer_names_tensorflow_scopes_are_taken(name):
    assert ("Dense", name) in modelcheck.check_model_config(sequential(layer("Dense", name)), "keras").layers


def test_compile_config_is_not_inspected():
    config = sequential(layer("Dense", "d"))
    config["compile_config"] = {"loss": {"class_name": "MyLoss"}}
    modelcheck.check_model_config(config, "keras")


def test_zip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", json.dumps(sequential(layer("Dense", "d"))))
        z.writestr("pad.bin", b"\0" * 10_000_000)
    with pytest.raises(ModelRejected, match="expands"):
        modelcheck.inspect_model(path, max_decompressed=1_000_000)


def test_dataset_with_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    arrays = {k: np.zeros((2, 3)) for k in ("x_train", "y_train", "x_test", "y_test")}
    arrays["y_train"] = np.array([{"a": 1}, None], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(ModelRejected) as error:
        modelcheck.inspect_dataset(path, 10**9)
    assert error.value.field == "dataset"


def test_dataset_lengths_must_agree(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((5, 2)), y_train=np.zeros(4), x_test=np.zeros((2, 2)), y_test=np.zeros(2))
    with pytest.raises(ModelRejected, match="differ in length"):
        modelcheck.inspect_dataset(path, 10**9)


@pytest.mark.parametrize(
    "model, sample, fits",
    [
        (None, [3], True),
        ([28, 28], [28, 28], True),
        ([None, 28], [5, 28], True),
        ([28, 28], [28, 28, 1], False),
        ([8, 8], [6, 6], False),
    ],
)
def test_shapes_fit(model, sample, fits):
    assert modelcheck.shapes_fit(model, sample) is fits


@pytest.mark.parametrize(
    "config",
    [
        [],
        {"class_name": 5},
        {"class_name": "Sequential", "config": []},
        {"class_name": "Sequential", "config": {"layers": "x"}},
        {"class_name": "Sequential", "config": {"layers": [3]}},
        {
            "class_name": "Sequential",
            "config": {"layers": [{"class_name": "Dense", "config": {"batch_input_shape": "28"}}]},
        },
        {
            "class_name": "Sequential",
            "config": {"layers": [{"class_name": "Dense", "config": {"batch_shape": {"config": 1}}}]},
        },
    ],
)
def test_malformed_configs_are_rejected_or_described_never_crash(tmp_path, config):
    path = tmp_path / "odd.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", _empty_h5())
    try:
        info = modelcheck.inspect_model(path, 10**9)
    except ModelRejected:
        return
    assert info.input_shape is None


def _empty_h5() -> bytes:
    import io

    import h5py

    out = io.BytesIO()
    with h5py.File(out, "w"):
        pass
    return out.getvalue()


def test_a_keras_archive_without_weights_is_refused_naming_them(tmp_path):
    """Accepted before, it failed every job at load ("Expected a model.weights.h5 ...")."""
    path = tmp_path / "noweights.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(sequential(layer("Dense", "d"))))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.0"}))
    with pytest.raises(ModelRejected, match="holds no weights"):
        modelcheck.inspect_model(path, 10**9)


@pytest.mark.parametrize("member", ["config.json", "metadata.json"])
@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe"])
def test_a_member_that_is_not_json_is_named_not_called_a_corrupt_archive(tmp_path, member, text):
    path = tmp_path / "badjson.keras"
    members = {"config.json": json.dumps(sequential(layer("Dense", "d"))).encode(), "metadata.json": b"{}"}
    members[member] = text
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("model.weights.h5", _empty_h5())
    with pytest.raises(ModelRejected, match=f"the archive's {member} is not valid JSON"):
        modelcheck.inspect_model(path, 10**9)


def test_random_bytes_behind_a_zip_or_hdf5_signature(tmp_path):
    import os

    for head in (modelcheck.ZIP_SIGNATURE, modelcheck.HDF5_SIGNATURE):
        path = tmp_path / "noise"
        path.write_bytes(head + os.urandom(4096))
        with pytest.raises(ModelRejected):
            modelcheck.inspect_model(path, 10**9)


def test_deeply_nested_config_is_rejected(tmp_path):
    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", '{"class_name": "Sequential", "config": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ModelRejected):
        modelcheck.inspect_model(path, 10**9)


def test_a_model_saved_before_it_was_built_is_refused_at_upload(tmp_path):
    """No Input and never built: no input shape, no weights. It was accepted, planned as
    fitting, and failed on the worker ("has no input shape")."""
    import keras

    keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)]).save(tmp_path / "unbuilt.keras")
    with pytest.raises(modelcheck.ModelRejected, match="no input shape and no weights: build it before saving"):
        modelcheck.inspect_model(tmp_path / "unbuilt.keras", 1 << 30)
    built = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])
    built.build((None, 28, 28))
    built.save(tmp_path / "built.keras")
    assert modelcheck.inspect_model(tmp_path / "built.keras", 1 << 30).summary.total_params == 7850


def _subclassed_model(class_name: str, **kwargs):
    """A built subclass of keras.Model named ``class_name``, one Dense inside."""
    import keras

    def init(self, **kw):
        keras.Model.__init__(self, **kw)
        self.dense = keras.layers.Dense(2)

    cls = type(class_name, (keras.Model,), {"__init__": init, "call": lambda self, x: self.dense(x)})
    model = cls(**kwargs)
    model(np.zeros((1, 3), "float32"))
    return model


def test_refusals_of_custom_code_say_what_to_build_instead(tmp_path):
    """The Lambda refusal advised "a registered layer class", which is refused too; a subclassed
    model got no advice."""
    import keras

    @keras.saving.register_keras_serializable(package="mine")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((3,))
    keras.Model(inputs, Scale(name="scale")(inputs)).save(tmp_path / "registered.keras")
    with pytest.raises(ModelRejected, match=r"layer .scale. \(Scale\), not a built-in .*build it from built-in layers"):
        modelcheck.inspect_model(tmp_path / "registered.keras", 1 << 30)
    _subclassed_model("Net").save(tmp_path / "net.keras")
    with pytest.raises(ModelRejected, match="rebuild it as a Functional or Sequential model of built-in layers"):
        modelcheck.inspect_model(tmp_path / "net.keras", 1 << 30)
    keras.Model(inputs, keras.layers.Lambda(lambda x: x + 1, name="plus")(inputs)).save(tmp_path / "lambda.keras")
    with pytest.raises(ModelRejected) as lam:
        modelcheck.inspect_model(tmp_path / "lambda.keras", 1 << 30)
    assert "registered or not, are refused too" in str(lam.value) and "or a registered layer class" not in str(
        lam.value
    )


def test_the_refusal_of_a_subclassed_model_fits_the_error_cut(tmp_path):
    net = _subclassed_model("AVeryLongNameForAClassifierModelOfOurTeam", name="my_classifier_with_a_long_name")
    net.save(tmp_path / "net.keras")
    with pytest.raises(ModelRejected) as refused:
        modelcheck.inspect_model(tmp_path / "net.keras", 1 << 30)
    said = f"model: {refused.value}"
    assert len(said.encode()) <= 200 and said.endswith("model of built-in layers"), said


def test_every_kind_of_problem_comes_back_in_one_answer():
    """A refused class, two Keras 3 layers the service does not translate and two names
    TensorFlow cannot scope: five violations at once (the walk used to stop at the first kind,
    and the name and translation checks at their first layer)."""
    config = sequential(
        layer("InputLayer", "in", batch_shape=[None, 8, 8, 1]),
        layer("Lambda", "lam", function="..."),
        layer("ThresholdedReLU", "up", theta=1.0),
        layer("MaxPool2D", "noise"),
        layer("Dense", "dé 1"),
        layer("Dense", "dé 2"),
    )
    with pytest.raises(ModelRejected) as refused:
        modelcheck.check_model_config(config, "keras", "3.15.0")
    problems = [d for _, d in refused.value.violations]
    assert len(problems) == 5, problems
    assert "'lam' (Lambda)" in problems[0]
    assert "'dé 1'" in problems[1] and "'dé 2'" in problems[2]
    assert (
        problems[3].startswith("layer 'up' (ThresholdedReLU): the service cannot translate")
        and "supported: " in problems[3]
    )
    assert problems[4].startswith("layer 'noise' (MaxPool2D)") and all(len(p.encode()) <= 200 for p in problems)


def test_a_registered_class_in_an_h5_config_is_called_custom_code():
    """An .h5 names a registered class "package>Name", with no module: it was called "a Keras
    class the service does not take", as if built in."""
    with pytest.raises(ModelRejected, match="not a built-in Keras class"):
        modelcheck.check_model_config(sequential({"class_name": "probe>MyLayer", "config": {"name": "mine"}}), "h5")


def test_a_long_layer_name_leaves_room_for_the_reason():
    with pytest.raises(ModelRejected) as refused:
        modelcheck.check_model_config(sequential(layer("Lambda", "x" * 5000, function="...")), "keras")
    assert "would run arbitrary code" in str(refused.value).encode()[:200].decode()


def test_the_answer_to_a_model_of_many_refused_layers_counts_them_all():
    """The server lists PRUNING_MAX_VIOLATIONS of them and counts the rest, those modelcheck
    only counted included; the message says how many, the violations say which."""
    import grpc
    from google.rpc import error_details_pb2, status_pb2

    from pruning_server.errors import Cut, model_refused, to_status

    config = sequential(*(layer("Lambda", f"l{i}", function="...") for i in range(modelcheck.MAX_LAYER_PROBLEMS + 5)))
    with pytest.raises(ModelRejected) as refused:
        modelcheck.check_model_config(config, "keras")
    exc = refused.value
    status = to_status(model_refused(exc), Cut(200, 10))
    assert (
        status.code == grpc.StatusCode.INVALID_ARGUMENT
        and status.details == f"model: the model has {exc.total} refused layers"
    )
    detail = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"]).details[0]
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    described = [v.description for v in bad.field_violations]
    assert len(described) == 11 and "'l0'" in described[0] and "'l9'" in described[9]
    assert described[10] == f"and {exc.total - 10} more problems"
    one_more = to_status(model_refused(ModelRejected("a", more=["a"] * 10)), Cut(200, 10))
    detail = status_pb2.Status.FromString(dict(one_more.trailing_metadata)["grpc-status-details-bin"]).details[0]
    assert detail.Unpack(bad) and bad.field_violations[-1].description == "and 1 more problem"
    one = to_status(model_refused(ModelRejected("layer 'x' ...; refused")), Cut(200, 10))
    assert one.details == "model: layer 'x' ...; refused"  # one problem: said as before


def test_only_layers_that_compute_are_listed_in_mixed_precision():
    """A model's dtype policy is the default of its layers, and an InputLayer computes nothing:
    neither is named among the layers in mixed precision (a refusal listed the model's name)."""
    mixed = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}
    config = sequential(
        layer("InputLayer", "in", batch_input_shape=[None, 4], dtype="mixed_float16"),
        layer("Flatten", "flat", dtype=mixed),
        layer("Dense", "d", dtype=mixed),
        layer("Dense", "out", dtype="float32"),
    )
    config["config"]["dtype"] = mixed
    info = modelcheck.check_model_config(config, "keras")
    assert info.mixed_precision == ["flat", "d"]
    assert info.left_whole == {"d": "mixed precision"}
    assert {x.name: x.prunable for x in info.summary.layers if x.class_name == "Dense"} == {"d": False, "out": True}


@pytest.mark.parametrize("dtype", [{"config": "mixed_float16"}, {"config": None}, 16, ["mixed_float16"]])
def test_a_malformed_dtype_is_not_mixed_precision(dtype):
    info = modelcheck.check_model_config(sequential(layer("Dense", "d", dtype=dtype)), "keras")
    assert info.mixed_precision == [] and info.left_whole == {}


@pytest.mark.parametrize("cut", [-100, 8])  # cut short; or bytes past what the header says
def test_an_array_whose_data_is_not_what_its_header_says_is_refused_at_upload(tmp_path, cut):
    """Accepted before, and the job failed reading it ("EOF: reading array data")."""
    import io

    arrays = {k: np.zeros((20, 4), "float32") for k in ("x_train", "x_test")}
    arrays |= {k: np.zeros(20, "int64") for k in ("y_train", "y_test")}
    path = tmp_path / "cut.npz"
    with zipfile.ZipFile(path, "w") as z:
        for name, array in arrays.items():
            out = io.BytesIO()
            np.lib.format.write_array(out, array)
            data = out.getvalue()
            if name == "x_train":
                data = data[:cut] if cut < 0 else data + b"\0" * cut
            z.writestr(f"{name}.npy", data)
    with pytest.raises(ModelRejected, match="array 'x_train' holds .* bytes of data, but its shape") as error:
        modelcheck.inspect_dataset(path, 10**9)
    assert error.value.field == "dataset"


def test_a_description_keeps_the_advice_after_what_it_echoes_within_the_answer_s_budget():
    """The 200-byte cut took the service's own hint off the end ("... or use the keep_accuracy
    r..."); a description may take twice that, and the answer stays within its budget."""
    from google.rpc import error_details_pb2, status_pb2

    from pruning_server.errors import Cut, Invalid, to_status

    hint = "x" * 150 + ": set a frequency of at most 14, or use the keep_accuracy recipe"  # about 215 bytes
    status = to_status(Invalid([("spec.pruning.schedule", hint)]), Cut(200, 10))
    bad = error_details_pb2.BadRequest()
    status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"]).details[0].Unpack(bad)
    assert bad.field_violations[0].description == hint and len(status.details.encode()) <= 200
    many = Invalid([(f"{i}" + "f" * 1000, "y" * 1000) for i in range(10)])  # each pair cut to 200 + 400 bytes
    status = to_status(many, Cut(200, 10))
    status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"]).details[0].Unpack(bad)
    kept = [v for v in bad.field_violations if v.field]
    assert sum(len(v.field) + len(v.description) for v in kept) <= Cut(200, 10).details_budget
    assert all(len(v.description) == 400 for v in kept) and len(kept) < 10
    assert bad.field_violations[-1].description == f"and {10 - len(kept)} more problems"


def _many_members(path, n: int, said: int | None = None):
    """An .npz of the four arrays and ``n`` empty members more, written by hand (zipfile takes
    minutes for a million); its end record says ``said`` members where given."""
    import io
    import struct
    import zlib

    arrays = {}
    for key, shape in (("x_train", (4, 2)), ("y_train", (4,)), ("x_test", (2, 2)), ("y_test", (2,))):
        raw = io.BytesIO()
        np.lib.format.write_array(raw, np.zeros(shape, np.int64))
        arrays[f"{key}.npy"] = raw.getvalue()
    names = [(name.encode(), data) for name, data in arrays.items()] + [(b"%x" % i, b"") for i in range(n)]
    body, directory = io.BytesIO(), io.BytesIO()
    for name, data in names:
        offset, crc = body.tell(), zlib.crc32(data)
        body.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(data), len(data), len(name), 0))
        body.write(name + data)
        sizes = (crc, len(data), len(data), len(name))
        directory.write(
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, *sizes, 0, 0, 0, 0, 0, offset)
        )
        directory.write(name)
    count = len(names) if said is None else said
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, directory.tell(), body.tell(), 0)
    path.write_bytes(body.getvalue() + directory.getvalue() + end)
    return path


def test_an_archive_of_too_many_members_is_refused_before_its_directory_is_read(tmp_path):
    """zipfile makes an object of every member of the directory: a 174 MB .npz of two million
    empty members took the server 950 MiB and 75 s of CPU to take in, and was stored."""
    assert "x_train" in modelcheck.inspect_dataset(_many_members(tmp_path / "few.npz", 100), 10**9)
    with pytest.raises(ModelRejected, match="the archive has 20004 members, over the limit of 10000") as refused:
        modelcheck.inspect_dataset(_many_members(tmp_path / "many.npz", 20_000), 10**9)
    assert refused.value.field == "dataset"
    with pytest.raises(ModelRejected, match="the archive has 20004 members, over the limit of 10000"):
        modelcheck.inspect_dataset(_many_members(tmp_path / "lying.npz", 20_000, said=4), 10**9)  # undercounted
    with pytest.raises(ModelRejected, match="20004 members"):
        modelcheck.inspect_model(_many_members(tmp_path / "many.keras", 20_000), 10**9)


def test_a_constant_tensor_in_the_graph_is_named_as_such_not_as_a_class(tmp_path):
    """A ViT's position embedding over keras.ops.arange(n): the refusal said "the class
    __tensor__, a Keras class the service does not take"."""
    import keras

    L = keras.layers
    inputs = keras.Input((16, 8))
    x = L.Add()([inputs, L.Embedding(16, 8)(keras.ops.arange(16))])
    keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling1D()(x))).save(tmp_path / "m.keras")
    with pytest.raises(modelcheck.ModelRejected) as refused:
        modelcheck.inspect_model(tmp_path / "m.keras", 1 << 30)
    assert "a constant tensor made outside its inputs" in str(refused.value)
    assert "__tensor__" not in str(refused.value)
