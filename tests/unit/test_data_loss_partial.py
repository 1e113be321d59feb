"""On a file system without flock, a download answered DATA_LOSS removes its partial file of
the changed bytes, which the next download would resume from."""

from __future__ import annotations

import errno

import grpc

from pruning_client import client as client_module
from pruning_client.exceptions import DataLoss


def test_a_data_loss_partial_goes_where_flock_is_refused(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(client_module.fcntl, "flock", no_flock)
    download = client_module._Download("ab" * 32, tmp_path / "out.bin", filename=None, resume=True)
    assert download.lock()  # goes on unserialized, as on Windows
    download.refresh()
    download.part.write_bytes(b"changed bytes, all but the last chunk")
    download.drop_after(DataLoss("DATA_LOSS: set aside", code=grpc.StatusCode.DATA_LOSS))
    assert not download.part.exists(), "kept: the next download resumes from the changed bytes"
