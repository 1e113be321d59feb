"""An upload where os has no O_NONBLOCK (Windows), and a download to a file system
whose flock fails (ENOLCK on NFS without lockd, ENOSYS on Lustre without -o flock)."""

import errno
import hashlib
import os
import zlib

import pytest

from pruning import wire
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client
from pruning_client import client as client_module

DATA = bytes(range(256)) * 40
ID = hashlib.sha256(DATA).hexdigest()


class Stub:
    def download(self, request, metadata=()):
        message = pb.DownloadChunk(offset=0, data=DATA, total_size=len(DATA), crc32=zlib.crc32(DATA))
        yield wire.parse_download_chunk(message.SerializeToString())


def test_an_upload_reads_its_file_where_os_has_no_O_NONBLOCK(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04" + b"x" * 100)
    monkeypatch.delattr(os, "O_NONBLOCK")
    upload = client_module._Upload(path, None)  # AttributeError without the fix
    assert upload.size == 104


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_download_goes_on_where_the_file_system_has_no_flock(tmp_path, monkeypatch, code):
    def flock(fd, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(client_module.fcntl, "flock", flock)
    with Client("127.0.0.1:1") as client:
        client._transfers = Stub()
        dest = client.download(ID, tmp_path / "out.bin")
    assert dest.read_bytes() == DATA
