"""The SDK's cache of the sha256 of files it hashed before an upload: an unchanged file is
announced without being read again; any change, or a file changed too close to its hash, is
hashed again; a cache that cannot be used is a miss, never an error."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time

import grpc
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, IntegrityError, hashcache
from pruning_client import client as client_module
from pruning_client.hashcache import HashCache, default_path

DATA = bytes(range(256)) * 40
ID = hashlib.sha256(DATA).hexdigest()


class FakeStub:
    """Holds ``held`` (answers after the header when it is announced); otherwise stores what
    it receives, refusing bytes that do not match the announced sha256, as the server does."""

    def __init__(self, held: str = "") -> None:
        self.held, self.headers, self.received = held, [], []

    def upload_model(self, requests, timeout=None, metadata=()):
        requests = (pb.UploadRequest.FromString(r) if isinstance(r, bytes) else r for r in requests)
        header = next(requests).header
        self.headers.append(header)
        if header.sha256 and header.sha256 == self.held:
            return pb.Artifact(id=self.held, size=header.size)
        data = b"".join(r.chunk for r in requests)
        self.received.append(data)
        sha = hashlib.sha256(data).hexdigest()
        if header.sha256 and header.sha256 != sha:
            raise Refused("content does not match the announced sha256")
        return pb.Artifact(id=sha, size=len(data))


class Refused(grpc.RpcError):
    """INVALID_ARGUMENT, as the server refuses an upload."""

    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return self._details


@pytest.fixture()
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "hashes.sqlite3"
    monkeypatch.setenv("PRUNING_HASH_CACHE", str(path))
    return path


@pytest.fixture()
def client(cache_file):
    with Client("127.0.0.1:1") as c:  # never connects: the stub is replaced
        c._transfers = FakeStub()
        yield c


def test_an_unchanged_file_is_announced_without_being_read_again(client, tmp_path, monkeypatch):
    monkeypatch.setattr(hashcache, "RACY_S", 0.0)
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    time.sleep(0.01)
    assert client.upload_model(path).id == ID
    assert client._transfers.headers[-1].sha256 == ID

    def unread(path):
        raise AssertionError("hashed again")

    monkeypatch.setattr(client_module, "_file_sha256", unread)
    client._transfers = FakeStub(held=ID)
    assert client.upload_model(path).id == ID  # announced from the cache, answered after the header
    assert client._transfers.headers[-1].sha256 == ID and client._transfers.received == []


@pytest.mark.parametrize("change", ["same size, other bytes", "chmod", "replaced by another file"])
def test_a_changed_file_is_hashed_again(client, tmp_path, monkeypatch, change):
    monkeypatch.setattr(hashcache, "RACY_S", 0.0)
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    time.sleep(0.01)
    client.upload_model(path)
    other = DATA[:-1] + b"x"
    if change == "same size, other bytes":
        with open(path, "r+b") as f:  # the same inode and size; the times may stay within a tick
            f.write(other)
    elif change == "chmod":
        other = DATA
        path.chmod(0o600)
    else:
        (tmp_path / "new").write_bytes(other)
        os.replace(tmp_path / "new", path)
    time.sleep(0.01)
    hashed = []
    real = client_module._file_sha256
    monkeypatch.setattr(client_module, "_file_sha256", lambda p: hashed.append(p) or real(p))
    assert client.upload_model(path).id == hashlib.sha256(other).hexdigest()
    assert hashed == [path]


def test_a_file_changed_just_before_its_hash_is_not_kept(tmp_path, cache_file):
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    st = os.stat(path)
    cache = HashCache(cache_file)
    assert not cache.put(st, st, ID, time.time_ns())  # changed within RACY_S of the hash
    assert cache.get(st) is None
    assert cache.put(st, st, ID, time.time_ns() + int(hashcache.RACY_S * 1e9) + 1)
    assert cache.get(st) == ID


def test_a_file_changed_during_its_hash_is_not_kept(tmp_path, cache_file):
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    before = os.stat(path)
    time.sleep(0.01)
    path.write_bytes(DATA[:-1])
    later = time.time_ns() + 10**10
    assert not HashCache(cache_file).put(before, os.stat(path), ID, later)


def test_a_stale_announcement_the_server_refuses_is_forgotten(client, tmp_path, cache_file):
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    st = os.stat(path)
    wrong = hashlib.sha256(b"other").hexdigest()
    cache = HashCache(cache_file)
    assert cache.put(st, st, wrong, time.time_ns() + 10**10)  # as if the file changed unseen
    with pytest.raises(IntegrityError, match="changed while it was uploaded"):
        client.upload_model(path)
    assert cache.get(os.stat(path)) is None


def test_the_cache_keeps_at_most_its_bound(tmp_path, cache_file, monkeypatch):
    monkeypatch.setattr(hashcache, "MAX_ENTRIES", 3)
    cache = HashCache(cache_file)
    stats = []
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(bytes([i]))
        stats.append(os.stat(tmp_path / f"f{i}"))
        assert cache.put(stats[-1], stats[-1], f"{i:064x}", time.time_ns() + 10**10)
        time.sleep(0.01)
    with sqlite3.connect(cache_file) as db:
        assert db.execute("SELECT COUNT(*) FROM hashes").fetchone()[0] == 3
    assert [cache.get(st) for st in stats] == [None, None, f"{2:064x}", f"{3:064x}", f"{4:064x}"]


def test_a_cache_that_cannot_be_used_is_a_miss(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    st = os.stat(blocker)
    for where in (blocker / "hashes.sqlite3", blocker):  # under a file; a file that is not SQLite
        cache = HashCache(where)
        assert not cache.put(st, st, ID, time.time_ns() + 10**10)
        assert cache.get(st) is None
        cache.forget(st)
    monkeypatch.setenv("PRUNING_HASH_CACHE", str(blocker))
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    with Client("127.0.0.1:1") as c:
        c._transfers = FakeStub()
        assert c.upload_model(path).id == ID


@pytest.mark.parametrize("value", ["off", "", "0"])
def test_the_cache_can_be_turned_off(monkeypatch, value):
    monkeypatch.setenv("PRUNING_HASH_CACHE", value)
    assert default_path() is None


def test_the_default_place_is_the_users_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("PRUNING_HASH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_path() == tmp_path / "pruning" / "hashes.sqlite3"


def test_a_client_without_the_cache_hashes_every_time(tmp_path, cache_file, monkeypatch):
    monkeypatch.setattr(hashcache, "RACY_S", 0.0)
    path = tmp_path / "model.keras"
    path.write_bytes(DATA)
    time.sleep(0.01)
    with Client("127.0.0.1:1", hash_cache=False) as c:
        c._transfers = FakeStub()
        c.upload_model(path)
    assert not cache_file.exists()
