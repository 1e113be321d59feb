"""A model file whose HDF5 reads bytes from outside itself is refused at upload (and by the
worker, which inspects the file again before it loads it): external storage, virtual datasets
and external links would make the worker read files of its host (its /proc/self/environ with
the API keys, another tenant's blob) into the model's weights, which the tenant's export then
hands back."""

from __future__ import annotations

import io
import json
import zipfile

import grpc
import h5py
import numpy as np
import pytest
from hostile import hostile_server, model_config, violated_fields

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
KEY = (("x-api-key", "key-b"),)


@pytest.fixture(scope="module")
def stub(env):
    srv = hostile_server(env, "h5-references")
    with grpc.insecure_channel(srv.target) as channel:
        yield pb_grpc.PruningServiceStub(channel)
    srv.stop()


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A file on the server's (and a worker's) host that no tenant may read."""
    path = tmp_path_factory.mktemp("host") / "secret"
    path.write_bytes(b"PRUNING_API_KEYS=key-a=tenant-a" + b"\0" * 64)
    return path


def _weights(f: h5py.Group, how: str, secret, other) -> None:
    """``f``'s model_weights: the hidden layer's kernel stored ``how``."""
    group = f.require_group("model_weights").require_group("hidden").require_group("hidden")
    if how == "inside":
        group["kernel:0"] = np.zeros((8, 16), np.float32)
    elif how == "external_storage":
        group.create_dataset("kernel:0", shape=(8, 16), dtype="uint8", external=[(str(secret), 0, 128)])
    elif how == "virtual":
        layout = h5py.VirtualLayout(shape=(8, 16), dtype="float32")
        layout[:] = h5py.VirtualSource(str(other), "kernel", shape=(8, 16))
        group.create_virtual_dataset("kernel:0", layout)
    elif how == "external_link":
        group["kernel:0"] = h5py.ExternalLink(str(other), "kernel")
    elif how == "external_link_at_root":
        f["elsewhere"] = h5py.ExternalLink(str(other), "/")


def _h5_model(how: str, secret, other) -> bytes:
    out = io.BytesIO()
    with h5py.File(out, "w") as f:
        f.attrs["model_config"] = json.dumps(model_config())
        f.attrs["keras_version"] = "2.15.0"
        _weights(f, how, secret, other)
    return out.getvalue()


def _keras_model(how: str, secret, other) -> bytes:
    weights = io.BytesIO()
    with h5py.File(weights, "w") as f:
        _weights(f, how, secret, other)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", json.dumps(model_config()))
        z.writestr("metadata.json", json.dumps({"keras_version": "2.15.0"}))
        z.writestr("model.weights.h5", weights.getvalue())
    return out.getvalue()


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another HDF5 file on the host (another tenant's .h5 blob, say)."""
    path = tmp_path_factory.mktemp("host") / "other.h5"
    with h5py.File(path, "w") as f:
        f["kernel"] = np.ones((8, 16), np.float32)
    return path


def _upload(stub, data: bytes, filename: str):
    requests = [pb.UploadRequest(header=pb.UploadHeader(filename=filename)), pb.UploadRequest(chunk=data)]
    return stub.UploadModel(iter(requests), metadata=KEY)


MAKERS = {"m.h5": _h5_model, "m.keras": _keras_model}


@pytest.mark.parametrize("filename", sorted(MAKERS))
def test_a_model_with_its_weights_inside_is_accepted(stub, secret, other, filename):
    """The control: the same file with the kernel stored in it passes."""
    assert len(_upload(stub, MAKERS[filename]("inside", secret, other), filename).id) == 64


@pytest.mark.parametrize("how", ["external_storage", "virtual", "external_link", "external_link_at_root"])
@pytest.mark.parametrize("filename", sorted(MAKERS))
def test_a_model_reading_files_outside_itself_is_refused(stub, secret, other, filename, how):
    with pytest.raises(grpc.RpcError) as error:
        _upload(stub, MAKERS[filename](how, secret, other), filename)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert violated_fields(error.value) == ["model"]
    assert "own file" in error.value.details()
