"""Archives are bounded while they are read: a .keras whose configuration expands to 1 GiB
and zips whose directory lies about a member's size are refused, and the server's peak
memory (its own process, VmHWM) grows by less than 100 MiB."""

from __future__ import annotations

import json
import pathlib
import struct
import zipfile

import grpc
import pytest
from hostile import ServerProcess, keras_bytes, model_config, npz_bytes

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
GiB = 1 << 30
MiB = 1 << 20
GROWTH_LIMIT = 100 * MiB
KEY = (("x-api-key", "key-a"),)


def _stream_member(z: zipfile.ZipFile, name: str, head: bytes, fill: bytes, size: int, tail: bytes = b"") -> None:
    """Writes a member of ``size`` bytes in 1 MiB pieces: the test never holds it whole."""
    with z.open(name, "w") as member:
        member.write(head)
        left = size - len(head) - len(tail)
        piece = fill * (MiB // len(fill))
        while left > 0:
            member.write(piece[:left])
            left -= len(piece)
        member.write(tail)


def config_bomb(path: pathlib.Path) -> pathlib.Path:
    """A valid .keras whose config.json is a model padded with 1 GiB of whitespace."""
    text = json.dumps(model_config())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        _stream_member(z, "config.json", text[:-1].encode(), b" ", GiB, b"}")
        z.writestr("metadata.json", json.dumps({"keras_version": "2.15.0"}))
    return path


def _lie_about(path: pathlib.Path, member: str, claimed: int) -> None:
    """Rewrites the sizes the local header and the central directory give ``member``."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (local := data.find(signature, start)) >= 0:
            start = local + 4
            name_len_at = 26 if signature == b"PK\x03\x04" else 28
            name_len = struct.unpack_from("<H", data, local + name_len_at)[0]
            header = 30 if signature == b"PK\x03\x04" else 46
            if data[local + header : local + header + name_len] == name:
                struct.pack_into("<I", data, local + size_at, claimed)
    path.write_bytes(bytes(data))


def lying_keras(path: pathlib.Path) -> pathlib.Path:
    """A .keras whose directory claims 100 bytes for a 1 GiB weights member."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("config.json", json.dumps(model_config()))
        z.writestr("metadata.json", json.dumps({"keras_version": "2.15.0"}))
        _stream_member(z, "model.weights.h5", b"", b"\0", GiB)
    _lie_about(path, "model.weights.h5", 100)
    return path


def lying_npz(path: pathlib.Path) -> pathlib.Path:
    """A dataset whose directory claims 100 bytes for a 1 GiB member."""
    path.write_bytes(npz_bytes())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        _stream_member(z, "padding.npy", b"", b"\0", GiB)
    _lie_about(path, "padding.npy", 100)
    return path


def _peak_rss(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def server_process(env, tmp_path_factory):
    """The server in a process of its own, so its memory is measured alone."""
    with ServerProcess(env, tmp_path_factory.mktemp("archives"), "archives") as server:
        yield server.proc, server.target


def _upload(stub, method: str, path: pathlib.Path):
    def requests():
        yield pb.UploadRequest(header=pb.UploadHeader(filename=path.name))
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                yield pb.UploadRequest(chunk=chunk)

    return getattr(stub, method)(requests(), metadata=KEY, timeout=120)


@pytest.mark.parametrize(
    "build, method",
    [(config_bomb, "UploadModel"), (lying_keras, "UploadModel"), (lying_npz, "UploadDataset")],
    ids=["config-bomb", "lying-keras", "lying-npz"],
)
def test_archive_bomb_is_refused_with_flat_memory(server_process, tmp_path, build, method):
    proc, target = server_process
    path = build(tmp_path / ("bomb.npz" if method == "UploadDataset" else "bomb.keras"))
    with zipfile.ZipFile(path) as z:  # the bomb is what it claims to be
        assert sum(i.compress_size for i in z.infolist()) < 16 * MiB
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PruningServiceStub(channel)
        warm = tmp_path / "warm.keras"
        warm.write_bytes(keras_bytes())
        _upload(stub, "UploadModel", warm)  # the readers' imports are loaded before measuring
        before = _peak_rss(proc.pid)
        with pytest.raises(grpc.RpcError) as error:
            _upload(stub, method, path)
        growth = _peak_rss(proc.pid) - before
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    print(f"{path.name} ({path.stat().st_size} bytes): peak RSS grew {growth / MiB:.1f} MiB")
    assert growth < GROWTH_LIMIT
