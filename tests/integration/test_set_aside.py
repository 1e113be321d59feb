"""Bytes a whole download found changed behind the service's back are set aside: never the
same content stored again meanwhile, and DATA_LOSS even when setting them aside fails (a
local artifact store, a real server)."""

from __future__ import annotations

import pathlib

import grpc
import numpy as np
import pytest

from conftest import ServerThread, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, DataLoss

pytestmark = pytest.mark.integration
MiB = 1 << 20


def _dataset(path: pathlib.Path, mib: int) -> bytes:
    rng = np.random.default_rng(0)
    n = mib * MiB // 16
    x, y = rng.random((n, 4), dtype=np.float32), np.zeros(n, dtype=np.int8)
    np.savez(path, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    return path.read_bytes()


def _stored_then_changed(client: Client, settings, path: pathlib.Path, mib: int):
    """A dataset of ``mib`` MiB uploaded, then one of its bytes changed in the local store (the
    file's size kept); (its bytes as uploaded, the artifact, the stored file)."""
    data = _dataset(path, mib)
    artifact = client.upload_dataset(path)
    stored = settings.artifacts_path / artifact.id[:2] / artifact.id
    stored.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    return data, artifact, stored


def test_a_slow_download_of_changed_bytes_leaves_the_file_stored_again_in_place(env, tmp_path):
    """Two downloads read the same changed file; the first is DATA_LOSS and sets it aside;
    the tenant uploads the file again, as told; the second, still streaming the old file,
    must not set aside the good file now in its place."""
    settings = settings_for(
        env, queue=f"{env['PRUNING_QUEUE']}-race", max_upload_bytes=256 * MiB, state_dir=tmp_path / "state"
    )
    server = ServerThread(settings)
    try:
        with Client(server.target, timeout=120) as client:
            good = tmp_path / "data.npz"
            data, artifact, stored = _stored_then_changed(client, settings, good, 48)

            slow = client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id))
            next(slow)  # under way: it reads the changed file, then waits for its client
            with pytest.raises(DataLoss, match="set aside"):
                client.download(artifact.id, tmp_path / "first")
            assert client.upload_dataset(good).id == artifact.id  # stored anew, as told
            assert stored.read_bytes() == data

            with pytest.raises(grpc.RpcError) as error:
                for _ in slow:
                    pass
            assert error.value.code() == grpc.StatusCode.DATA_LOSS  # it did read changed bytes
            assert stored.exists(), "the good file stored again was set aside by the slow download"
            assert client.download(artifact.id, tmp_path / "again").read_bytes() == data
    finally:
        server.stop()


def test_a_download_whose_set_aside_fails_is_still_data_loss(env, tmp_path, monkeypatch):
    """Setting the bytes aside fails (a permission, a store refusing the copy, an S3 object
    past CopyObject's 5 GiB): the download still read changed bytes, and is DATA_LOSS."""
    from pruning_core import objectstore

    def refused(self, artifact_id, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self.root / "quarantine"))

    monkeypatch.setattr(objectstore.LocalStore, "quarantine", refused)
    settings = settings_for(env, queue=f"{env['PRUNING_QUEUE']}-refused", state_dir=tmp_path / "state")
    server = ServerThread(settings)
    try:
        with Client(server.target, timeout=60) as client:
            _, artifact, _ = _stored_then_changed(client, settings, tmp_path / "data.npz", 1)
            with pytest.raises(grpc.RpcError) as error:
                list(client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id)))
            assert error.value.code() == grpc.StatusCode.DATA_LOSS, (error.value.code(), error.value.details())
    finally:
        server.stop()
