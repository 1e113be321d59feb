"""SDK edges against the real server (no worker): an unreadable upload fails before any call,
a partial file longer than the artifact is discarded, a destination ending with a separator is
a directory."""

from __future__ import annotations

import asyncio

import pytest

import models
from pruning_client.aio import AsyncClient

pytestmark = pytest.mark.integration


@pytest.fixture()
def data(tmp_path_factory):
    return models.dataset(tmp_path_factory.mktemp("edges") / "data.npz")


def test_an_upload_of_a_missing_file_raises_file_not_found(client, tmp_path):
    missing = tmp_path / "nonexistent.keras"
    with pytest.raises(FileNotFoundError) as raised:
        client.upload_model(missing)
    assert raised.value.filename == str(missing)
    with pytest.raises(IsADirectoryError):
        client.upload_dataset(tmp_path)


def test_a_partial_file_longer_than_the_artifact_is_discarded(server, client, data, tmp_path):
    artifact = client.upload_dataset(data)
    content = data.read_bytes()
    for name in ("sync.npz", "async.npz"):
        (tmp_path / f"{name}.{artifact.id[:16]}.part").write_bytes(content + b"more than the artifact")
    assert client.download(artifact.id, tmp_path / "sync.npz").read_bytes() == content

    async def download():
        async with AsyncClient(server.target) as aclient:
            return await aclient.download(artifact.id, tmp_path / "async.npz")

    assert asyncio.run(download()).read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["async.npz", "sync.npz"]


def test_a_destination_ending_with_a_separator_is_a_directory(client, data, tmp_path):
    artifact = client.upload_dataset(data)
    path = client.download(artifact.id, f"{tmp_path}/out/", filename="data.npz")
    assert path == tmp_path / "out" / "data.npz" and path.read_bytes() == data.read_bytes()


def test_a_read_error_mid_upload_raises_that_error_not_unknown(client, data, monkeypatch):
    import errno

    from pruning_client.client import _Upload

    read = _Upload._read
    calls = {"n": 0}

    class Failing:
        """The file, failing its second read as a disk that goes away would."""

        def __init__(self, f, path):
            self.f, self.path = f, path

        def read(self, n):
            calls["n"] += 1
            if calls["n"] == 2:  # after the first chunk went out
                raise OSError(errno.EIO, "Input/output error", self.path)
            return self.f.read(n)

    monkeypatch.setattr(_Upload, "_read", lambda self, f: read(self, Failing(f, str(self.path))))
    big = data.parent / "big.npz"
    big.write_bytes(data.read_bytes() * 4 + b"\0" * (3 << 20))  # more than one chunk
    with pytest.raises(OSError) as raised:
        client.upload_dataset(big)
    assert raised.value.errno == errno.EIO and raised.value.filename == str(big)


def test_an_error_of_the_progress_callback_is_raised_as_itself_not_unknown(server, client, data):
    """A progress callback that raises (a pipeline's own stop, a bug in it) ended the upload
    with "UNKNOWN: Exception iterating requests!": the call raises the callback's error."""
    big = data.parent / "big-progress.npz"
    big.write_bytes(data.read_bytes() * 4 + b"\0" * (3 << 20))  # more than one chunk

    def stop(count: int) -> None:
        raise LookupError("the pipeline stopped the upload")

    with pytest.raises(LookupError, match="the pipeline stopped the upload"):
        client.upload_dataset(big, progress=stop)

    async def upload():
        async with AsyncClient(server.target) as aclient:
            await aclient.upload_dataset(big, progress=stop)

    with pytest.raises(LookupError, match="the pipeline stopped the upload"):
        asyncio.run(upload())
