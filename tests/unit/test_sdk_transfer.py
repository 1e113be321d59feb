"""Client.download and uploads against a fake stub: partial files per artifact, directories,
the CRC-32 and sha256 checks."""

import hashlib
import zlib

import pytest

from pruning import wire
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, IntegrityError
from pruning_client.client import _Download

DATA = bytes(range(256)) * 40
ID = hashlib.sha256(DATA).hexdigest()


class FakeStub:
    """Serves ``data`` as the artifact; ``crc`` is the CRC-32 its record holds (None: a record
    without one, as an older server wrote), sent on every chunk and in an upload's answer."""

    def __init__(self, data=DATA, chunk=1000, crc=None):
        self.data, self.chunk, self.offsets, self.uploaded, self.crc = data, chunk, [], b"", crc

    def DownloadArtifact(self, request, metadata=()):
        self.offsets.append(request.offset)
        for start in range(request.offset, len(self.data), self.chunk):
            message = pb.DownloadChunk(
                offset=start, data=self.data[start : start + self.chunk], total_size=len(self.data), crc32=self.crc
            )
            yield wire.parse_download_chunk(message.SerializeToString())  # as the client's calls read it

    def UploadModel(self, requests, timeout=None, metadata=()):
        requests = (pb.UploadRequest.FromString(r) if isinstance(r, bytes) else r for r in requests)
        header = self.header = next(requests).header
        self.uploaded = b"".join(r.chunk for r in requests)
        assert header.size == len(self.uploaded)
        return pb.Artifact(
            id=hashlib.sha256(self.data).hexdigest(), filename=header.filename, size=len(self.data), crc32=self.crc
        )

    # the client's transfer calls (pruning.wire.FramedCalls)
    download, upload_model = DownloadArtifact, UploadModel


@pytest.fixture()
def client():
    with Client("127.0.0.1:1") as c:  # never connects: the stub is replaced
        c.stub = c._transfers = FakeStub()
        yield c


def test_download_to_a_file_checks_and_moves_it(client, tmp_path):
    seen = []
    path = client.download(ID, tmp_path / "model.keras", progress=lambda n, total: seen.append((n, total)))
    assert path == tmp_path / "model.keras" and path.read_bytes() == DATA
    assert sum(n for n, _ in seen) == len(DATA) and {t for _, t in seen} == {len(DATA)}
    assert list(tmp_path.iterdir()) == [path]


def test_download_to_a_file_in_a_directory_not_there_yet_creates_it(client, tmp_path):
    path = client.download(ID, tmp_path / "out" / "sub" / "model.keras")  # as the CLI's -o does
    assert path.read_bytes() == DATA


def test_download_into_a_directory_uses_the_artifact_file_name_or_id(client, tmp_path):
    assert client.download(ID, tmp_path, filename="pruned_0.keras") == tmp_path / "pruned_0.keras"
    assert client.download(ID, tmp_path) == tmp_path / ID
    assert client.download(ID, tmp_path, filename="../../etc/passwd") == tmp_path / "passwd"


def test_a_partial_file_is_resumed_only_for_its_own_artifact(client, tmp_path):
    dest = tmp_path / "model.keras"
    own = tmp_path / f"model.keras.{ID[:16]}.part"
    own.write_bytes(DATA[:3000])
    other = tmp_path / f"model.keras.{'0' * 16}.part"
    other.write_bytes(b"another artifact's bytes")
    assert client.download(ID, dest).read_bytes() == DATA
    assert client.stub.offsets == [3000]
    assert not own.exists() and other.read_bytes() == b"another artifact's bytes"
    assert _Download("0" * 64, dest, filename=None, resume=True).offset == len(b"another artifact's bytes")


def test_a_download_that_does_not_match_its_sha256_is_removed(client, tmp_path):
    client.stub = client._transfers = FakeStub(data=DATA[:-1] + b"x")
    with pytest.raises(IntegrityError):
        client.download(ID, tmp_path / "model.keras")
    assert list(tmp_path.iterdir()) == []


def test_a_download_is_checked_by_the_crc32_the_server_recorded(client, tmp_path):
    client.stub = client._transfers = FakeStub(crc=zlib.crc32(DATA))
    assert client.download(ID, tmp_path / "model.keras").read_bytes() == DATA
    # the bytes served are not those the record's CRC-32 was computed over: refused, removed
    client.stub = client._transfers = FakeStub(data=DATA[:-1] + b"x", crc=zlib.crc32(DATA))
    with pytest.raises(IntegrityError, match="CRC-32"):
        client.download(ID, tmp_path / "other.keras")
    assert list(tmp_path.iterdir()) == [tmp_path / "model.keras"]


def test_verify_sha256_checks_the_id_end_to_end_where_the_crc32_agrees(client, tmp_path):
    """A record whose CRC-32 matches bytes that are not the id's: the CRC-32 check takes the
    server's word for it; verify="sha256" does not."""
    wrong = DATA[:-1] + b"x"
    client.stub = client._transfers = FakeStub(data=wrong, crc=zlib.crc32(wrong))
    assert client.download(ID, tmp_path / "model.keras").read_bytes() == wrong
    client.options.verify = "sha256"
    with pytest.raises(IntegrityError, match="sha256"):
        client.download(ID, tmp_path / "again.keras")
    assert not (tmp_path / "again.keras").exists()


def test_a_resumed_download_counts_the_partial_file_in_its_crc32(client, tmp_path):
    dest = tmp_path / "model.keras"
    part = tmp_path / f"model.keras.{ID[:16]}.part"
    client.stub = client._transfers = FakeStub(crc=zlib.crc32(DATA))
    part.write_bytes(DATA[:3000])
    assert client.download(ID, dest).read_bytes() == DATA and client.stub.offsets == [3000]
    dest.unlink()
    part.write_bytes(b"\0" * 3000)  # a partial file whose bytes are not the artifact's
    with pytest.raises(IntegrityError, match="CRC-32"):
        client.download(ID, dest)
    assert not dest.exists() and not part.exists()


@pytest.mark.parametrize("verify", ["crc32", "sha256"])
def test_a_download_from_a_record_without_a_crc32_is_checked_by_its_sha256(client, tmp_path, verify, monkeypatch):
    from pruning_client import client as client_module

    client.options.verify = verify
    real, read = client_module._file_sha256, []
    monkeypatch.setattr(client_module, "_file_sha256", lambda p: read.append(p) or real(p))
    assert client.download(ID, tmp_path / "model.keras").read_bytes() == DATA
    assert read == []  # hashed as it arrived, not read again
    part = tmp_path / f"resumed.keras.{ID[:16]}.part"
    part.write_bytes(DATA[:3000])
    assert client.download(ID, tmp_path / "resumed.keras").read_bytes() == DATA
    assert read == [part]  # only the partial file's bytes were read
    client.stub = client._transfers = FakeStub(data=DATA[:-1] + b"x")
    with pytest.raises(IntegrityError, match="sha256"):
        client.download(ID, tmp_path / "other.keras")


def test_an_upload_checked_on_the_way_compares_the_crc32_the_server_answers(client, tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    client.options.hash_first = False
    client.stub = client._transfers = FakeStub(crc=zlib.crc32(DATA))
    assert client.upload_model(path).id == ID
    client.stub = client._transfers = FakeStub(crc=zlib.crc32(DATA) ^ 1)  # received other bytes
    with pytest.raises(IntegrityError, match="CRC-32"):
        client.upload_model(path)
    client.stub = client._transfers = FakeStub(data=b"x" * len(DATA))  # no CRC-32: the sha256, read again
    with pytest.raises(IntegrityError, match="hashes to"):
        client.upload_model(path)


def test_upload_checks_the_id_the_server_answers(client, tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    sent = []
    assert client.upload_model(path, progress=sent.append).id == ID
    assert client.stub.uploaded == DATA and sum(sent) == len(DATA)
    client.stub = client._transfers = FakeStub(data=b"something else")
    with pytest.raises(IntegrityError):
        client.upload_model(path)


@pytest.mark.parametrize("hash_first", [True, False])
def test_upload_announces_the_sha256_when_hashing_first(client, tmp_path, hash_first):
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    client.options.hash_first = hash_first
    assert client.upload_model(path).id == ID
    assert client.stub.header.sha256 == (ID if hash_first else "")
    assert client.stub.uploaded == DATA


def test_a_file_already_holding_the_artifact_is_kept_without_a_download(client, tmp_path):
    dest = tmp_path / "model.keras"
    client.download(ID, dest)
    assert client.stub.offsets == [0]
    stale = tmp_path / f"model.keras.{ID[:16]}.part"
    stale.write_bytes(DATA[:10])
    seen = []
    assert client.download(ID, dest, progress=lambda n, total: seen.append((n, total))) == dest
    assert client.stub.offsets == [0]  # no call
    assert seen == [(len(DATA), len(DATA))] and not stale.exists() and dest.read_bytes() == DATA
    dest.write_bytes(DATA[:-1] + b"x")  # other bytes: downloaded again, replaced
    assert client.download(ID, dest).read_bytes() == DATA
    assert client.stub.offsets == [0, 0]


def test_an_unreadable_destination_is_downloaded_over(client, tmp_path, monkeypatch):
    from pruning_client import client as client_module

    dest = tmp_path / "model.keras"
    dest.write_bytes(b"old")

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(client_module, "_file_sha256", unreadable)
    client.stub = client._transfers = FakeStub(crc=zlib.crc32(DATA))  # checked without a sha256
    assert client.download(ID, dest).read_bytes() == DATA


def test_a_reader_thread_left_waiting_for_an_item_ends_when_the_stream_closes():
    import threading

    from pruning_client.client import _Ahead

    release = threading.Event()

    def slow():
        release.wait(5)  # a read that takes a moment
        yield b"chunk"

    ahead = _Ahead(slow())
    items = ahead.__enter__()
    taken: list[object] = []
    consumer = threading.Thread(target=lambda: taken.extend(items))  # waits in the queue, as gRPC's sender does
    consumer.start()
    threading.Timer(0.2, release.set).start()
    ahead.__exit__(None, None, None)  # the upload cancelled: its generator closed
    consumer.join(5)
    assert not consumer.is_alive()
