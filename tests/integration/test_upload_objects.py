"""Uploads of objects instead of files: a Keras model (tf_keras or Keras 3) and a dataset's
arrays (a mapping, or ``load_data()``'s pairs), through the real server, with no temporary
file left behind."""

from __future__ import annotations

import asyncio
import pathlib
import tempfile

import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, job_spec
from pruning_client.aio import AsyncClient

pytestmark = pytest.mark.integration


def _left_behind() -> set[pathlib.Path]:
    return set(pathlib.Path(tempfile.gettempdir()).glob("pruning-upload-*"))


def _arrays(n_train: int = 64, n_test: int = 16):
    rng = np.random.default_rng(0)
    return (
        (rng.random((n_train, 8, 8), dtype=np.float32), rng.integers(0, 4, n_train)),
        (rng.random((n_test, 8, 8), dtype=np.float32), rng.integers(0, 4, n_test)),
    )


def test_a_model_object_and_arrays_are_uploaded_as_files(client: Client):
    import tf_keras

    before = _left_behind()
    model = tf_keras.Sequential(
        [
            tf_keras.layers.InputLayer(input_shape=(8, 8)),
            tf_keras.layers.Flatten(name="flat"),
            tf_keras.layers.Dense(4, name="logits"),
        ],
        name="tiny-net",
    )
    artifact = client.upload_model(model)
    assert artifact.filename == "tiny-net.keras" and artifact.format == "keras"
    assert [layer.name for layer in artifact.model.layers if layer.name != "input_1"][-2:] == ["flat", "logits"]

    pairs = _arrays()
    from_pairs = client.upload_dataset(pairs)
    (x_train, y_train), (x_test, y_test) = pairs
    from_mapping = client.upload_dataset({"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test})
    assert from_pairs.id == from_mapping.id and from_pairs.filename == "dataset.npz"
    plan = client.validate(job_spec(artifact.id, dataset=from_pairs.id, epochs=1))
    assert plan.train_samples + plan.validation_samples == 64 and plan.test_samples == 16
    assert _left_behind() <= before

    with pytest.raises(TypeError, match="Keras model object"):
        client.upload_model(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="load_data"):
        client.upload_dataset(([1, 2, 3],))  # type: ignore[arg-type]


def test_keras3_model_and_named_outputs_through_the_async_client(server):
    import keras

    inputs = keras.Input((8, 8), name="pixels")
    flat = keras.layers.Flatten()(inputs)
    model = keras.Model(
        inputs, {"cls": keras.layers.Dense(4, name="cls")(flat), "reg": keras.layers.Dense(1, name="reg")(flat)}
    )
    (x_train, y_train), (x_test, y_test) = _arrays()
    data = (
        (x_train, {"cls": y_train, "reg": y_train.astype("float32")}),
        (x_test, {"cls": y_test, "reg": y_test.astype("float32")}),
    )

    async def main():
        async with AsyncClient(server.target) as client:
            artifact = await client.upload_model(model)
            dataset = await client.upload_dataset(data)
            spec = job_spec(artifact.id, dataset=dataset.id, epochs=1, output_losses={"reg": "mean_squared_error"})
            return artifact, await client.validate(spec)

    before = _left_behind()
    artifact, plan = asyncio.run(main())
    assert artifact.model.keras_version == 3 and artifact.format == "keras"
    assert sorted(o.name for o in artifact.model.outputs) == ["cls", "reg"]
    assert plan.test_samples == 16 and plan.keras_version == 3
    assert _left_behind() <= before
    assert pb.ARTIFACT_KIND_MODEL == artifact.kind


def test_a_model_object_is_saved_under_a_file_name_made_safe(tmp_path):
    from pruning_client.sources import model_file

    class Saves:
        name = "../a b/c"

        def save(self, filepath: str) -> None:
            pathlib.Path(filepath).write_bytes(b"saved")

    with model_file(Saves()) as path:
        assert path.name == "a_b_c.keras" and path.read_bytes() == b"saved"
        directory = path.parent
    assert not directory.exists()
    with model_file(tmp_path / "m.keras") as path:  # a path is itself
        assert path == tmp_path / "m.keras"


def test_arrays_that_the_service_would_refuse_are_refused_before_sending():
    from pruning_client.sources import dataset_arrays, dataset_file

    x = np.zeros((4, 2), "float32")
    assert sorted(dataset_arrays({"x_train": {"a": x, "b": x}, "y_train": x})) == ["x_train.a", "x_train.b", "y_train"]
    with pytest.raises(TypeError, match="Python objects"):
        with dataset_file({"x_train": np.array([object()] * 4)}):
            pass
    with pytest.raises(TypeError, match="not an array of numbers"):
        with dataset_file({"x_train": [[1, 2], [3]]}):
            pass
    with pytest.raises(TypeError, match="Python objects"):  # a mapping two levels deep
        with dataset_file({"x_train": {"a": {"b": x}}}):
            pass


def test_a_long_model_name_is_cut_to_a_file_name():
    from pruning_client.sources import model_file

    class Saves:
        name = "m" * 300

        def save(self, filepath: str) -> None:
            pathlib.Path(filepath).write_bytes(b"saved")

    with model_file(Saves()) as path:
        assert path.name == "m" * 100 + ".keras"
