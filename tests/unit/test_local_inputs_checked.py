"""A job's input in the local store is used where it lies, so nothing fetched it through a
check: its sha256 is checked once per worker process and state of the file, and a file
changed behind the service's back is set aside and fails the job with DATA_LOSS instead of
being trained on."""

from __future__ import annotations

import hashlib
import os

import pytest
from google.rpc import code_pb2

from pruning_core.objectstore import LocalStore
from pruning_worker import cache as cache_module
from pruning_worker.cache import InputCache
from pruning_worker.errors import InputDataLoss


def _stored(store: LocalStore, data: bytes) -> str:
    artifact_id = hashlib.sha256(data).hexdigest()
    path = store.path(artifact_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return artifact_id


def test_an_input_changed_at_its_size_is_set_aside_and_data_loss(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "artifacts")
    data = os.urandom(100_000)
    artifact_id = _stored(store, data)
    cache = InputCache(store, tmp_path / "cache", max_bytes=1 << 20)
    hashed: list[str] = []
    digest = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: hashed.append(name) or digest(f, name))

    assert cache.path(artifact_id) == store.path(artifact_id)
    assert cache.path(artifact_id) == store.path(artifact_id)
    assert hashed == ["sha256"]  # once: the second use finds the file as it was checked

    store.path(artifact_id).write_bytes(data[:50] + bytes([data[50] ^ 1]) + data[51:])
    with pytest.raises(InputDataLoss, match="does not match its sha256.*set aside: upload the file again") as lost:
        cache.path(artifact_id)
    assert lost.value.code == code_pb2.DATA_LOSS
    assert not store.path(artifact_id).exists()  # an upload of the file stores it anew
    (aside,) = (tmp_path / "artifacts" / "quarantine").iterdir()
    assert aside.name.startswith(f"{artifact_id}.") and aside.read_bytes() != data
    assert artifact_id not in set(store.ids())

    _stored(store, data)  # uploaded again
    assert cache.path(artifact_id) == store.path(artifact_id)
    assert len(hashed) == 3


def test_a_file_stored_again_while_it_was_hashed_is_not_set_aside(tmp_path, monkeypatch):
    """The hash ran over the old file while an upload put the new one in its place: the job
    fails (it read the old bytes), and the new file stays."""
    store = LocalStore(tmp_path / "artifacts")
    data = os.urandom(10_000)
    artifact_id = _stored(store, data)
    path = store.path(artifact_id)
    path.write_bytes(b"x" * len(data))
    digest = hashlib.file_digest

    def replaced_meanwhile(f, name):
        out = digest(f, name)
        fresh = path.with_name("fresh")
        fresh.write_bytes(data)
        os.replace(fresh, path)
        return out

    monkeypatch.setattr(hashlib, "file_digest", replaced_meanwhile)
    monkeypatch.setattr(cache_module, "_checked_in_place", {})
    with pytest.raises(InputDataLoss):
        InputCache(store, tmp_path / "cache", max_bytes=1 << 20).path(artifact_id)
    assert path.read_bytes() == data and not (tmp_path / "artifacts" / "quarantine").exists()


def test_a_set_aside_leaves_the_content_stored_again_since_it_was_read(tmp_path):
    """What a read found changed is set aside, never a file stored in its place since (the
    content uploaded again, once another read had set the changed bytes aside)."""
    from pruning_core.objectstore import file_version

    store = LocalStore(tmp_path / "artifacts")
    data = os.urandom(10_000)
    artifact_id = _stored(store, data)
    path = store.path(artifact_id)
    path.write_bytes(b"x" * len(data))
    read = file_version(path.stat())  # what a download or a job read, and found changed
    fresh = path.with_name("fresh")
    fresh.write_bytes(data)
    os.replace(fresh, path)  # stored again meanwhile
    assert store.quarantine(artifact_id, read) is None
    assert path.read_bytes() == data and not (tmp_path / "artifacts" / "quarantine").exists()
    assert store.quarantine(artifact_id, file_version(path.stat())) is not None  # the one read goes


def test_the_files_remembered_as_checked_are_bounded(tmp_path, monkeypatch):
    """A worker process that runs many jobs on many local inputs remembers at most
    CHECKED_IN_PLACE_MAX checked files, forgetting the oldest first."""
    monkeypatch.setattr(cache_module, "_checked_in_place", {})
    monkeypatch.setattr(cache_module, "CHECKED_IN_PLACE_MAX", 3)
    store = LocalStore(tmp_path / "artifacts")
    cache = InputCache(store, tmp_path / "cache", max_bytes=1 << 20)
    ids = [_stored(store, os.urandom(100)) for _ in range(5)]
    for artifact_id in ids:
        cache.path(artifact_id)
    assert list(cache_module._checked_in_place) == [str(store.path(i)) for i in ids[2:]]
