"""An upload sent at once (``hash_first=False``) of a file rewritten in place while it is read
(a checkpoint callback saving over the model, same size): the bytes sent would be some of each
version, which the CRC-32 (or sha256) of the bytes sent cannot see, and the server stores an
upload once it has the announced size. The client says IntegrityError before the last bytes go."""

import hashlib
import os

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, IntegrityError
from pruning_client.client import CHUNK

V1 = os.urandom(3 * CHUNK + 123)
V2 = os.urandom(len(V1))


class Stub:
    """Takes an upload's requests as gRPC would, and stores what it got once it has the size
    the header announced (as the server does)."""

    def __init__(self):
        self.received, self.stored = 0, None

    def upload_model(self, requests, timeout=None, metadata=()):
        requests = (pb.UploadRequest.FromString(r) if isinstance(r, bytes) else r for r in requests)
        header = next(requests).header
        data = b""
        for request in requests:
            data += request.chunk
            self.received = len(data)
            if len(data) == header.size:
                self.stored = data
                return pb.Artifact(id=hashlib.sha256(data).hexdigest(), size=len(data))
        raise AssertionError("the stream ended short of the announced size")


def _model(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(V1)
    os.utime(path, ns=(10**18, 10**18))  # written long ago: a rewrite now changes its times
    return path


def _rewrite_after_the_first_chunk(path):
    done = []

    def progress(count):
        if not done:
            done.append(count)
            with open(path, "r+b") as f:
                f.write(V2)

    return progress


@pytest.mark.parametrize("verify", ["crc32", "sha256"])
def test_a_file_rewritten_in_place_while_sent_is_an_integrity_error_and_not_stored(tmp_path, verify):
    path = _model(tmp_path)
    stub = Stub()
    with Client("127.0.0.1:1", hash_first=False, verify=verify) as client:
        client._transfers = stub
        with pytest.raises(IntegrityError, match="changed while it was uploaded"):
            client.upload_model(path, progress=_rewrite_after_the_first_chunk(path))
    assert stub.stored is None and stub.received < len(V1)


def test_a_file_left_as_it_is_uploads(tmp_path):
    path = _model(tmp_path)
    stub = Stub()
    with Client("127.0.0.1:1", hash_first=False) as client:
        client._transfers = stub
        client.stub = stub
        artifact = client.upload_model(path)
    assert artifact.id == hashlib.sha256(V1).hexdigest() and stub.stored == V1


def test_a_hard_link_or_chmod_by_another_program_is_no_change(tmp_path):
    """Its change time moves (a DVC cache linking the file, a chmod), its bytes do not: the
    upload goes on."""
    path = _model(tmp_path)
    stub = Stub()
    touched = []

    def progress(count):
        if not touched:
            touched.append(count)
            os.link(path, tmp_path / "linked.h5")
            os.chmod(path, 0o600)

    with Client("127.0.0.1:1", hash_first=False) as client:
        client._transfers = stub
        client.stub = stub
        artifact = client.upload_model(path, progress=progress)
    assert touched and artifact.id == hashlib.sha256(V1).hexdigest() and stub.stored == V1
