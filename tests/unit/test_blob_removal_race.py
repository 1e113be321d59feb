"""The housekeeping's removal of an old blob no record points to, racing an upload of the same
bytes that commits it again (each in a thread, as the server runs both): the upload's file is
never the one deleted. A check of the file's age then an unlink lost it now and then (11 of
5,000 races); the file is now moved aside and judged again before it goes."""

from __future__ import annotations

import os
import random
import threading
import time

from pruning_core.blobs import BlobStore


def _race(store: BlobStore, artifact: str, data: bytes) -> bool:
    """One removal of the old blob against one commit of the same bytes; whether it removed."""
    old = time.time() - 3600
    os.utime(store.path(artifact), (old, old))
    writer = store.writer()  # an upload received and checked, about to commit
    writer.write(data)
    writer.close()
    barrier = threading.Barrier(2)
    jitter = random.random() * 200e-6
    outcome: dict[str, bool] = {}

    def remove() -> None:
        barrier.wait()
        outcome["removed"] = store.remove(artifact, 60.0, 0.0)

    def commit() -> None:
        barrier.wait()
        until = time.perf_counter() + jitter
        while time.perf_counter() < until:
            pass
        writer.commit()

    threads = [threading.Thread(target=remove), threading.Thread(target=commit)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome["removed"]


def test_a_blob_written_again_while_it_is_removed_stays(tmp_path):
    store = BlobStore(tmp_path / "store", direct=False)
    data = os.urandom(4096)
    source = tmp_path / "model.keras"
    source.write_bytes(data)
    artifact = store.put_file(source).id
    removed = lost = 0
    for _ in range(1500):
        if not store.path(artifact).exists():
            store.put_file(source)
        removed += _race(store, artifact, data)
        lost += not store.path(artifact).exists()
    assert lost == 0, f"the blob written again was deleted {lost} times"
    assert not list(store.tmp_dir.glob("removing-*"))  # nothing left aside
    assert removed  # some removals went before the commit: the old file went, the new one came


def test_a_blob_left_aside_by_a_dead_removal_is_put_back(tmp_path, monkeypatch):
    from pruning_core import blobs

    store = BlobStore(tmp_path / "store", direct=False)
    source = tmp_path / "d.npz"
    source.write_bytes(b"x" * 100)
    artifact = store.put_file(source).id
    aside = store.tmp_dir / f"removing-{artifact}-1-2"
    os.replace(store.path(artifact), aside)  # moved aside, then the process died
    store.sweep(60.0)
    assert aside.exists()  # moved a moment ago: a removal may still be judging it
    later = time.time() + 120
    monkeypatch.setattr(blobs.time, "time", lambda: later)  # two minutes on (a file's ctime cannot be set)
    store.sweep(60.0)
    assert store.path(artifact).read_bytes() == b"x" * 100 and not aside.exists()


def test_a_blob_goes_back_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    from pruning_core import blobs

    store = BlobStore(tmp_path / "store", direct=False)
    source = tmp_path / "m.keras"
    source.write_bytes(b"y" * 64)
    artifact = store.put_file(source).id
    aside = store.tmp_dir / f"removing-{artifact}-1-2"
    os.replace(store.path(artifact), aside)

    def no_links(*args, **kwargs):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(blobs.os, "link", no_links)
    blobs._put_back(aside, store.path(artifact))
    assert store.path(artifact).read_bytes() == b"y" * 64 and not aside.exists()


def test_a_marker_write_leaves_nothing_and_a_crashed_ones_file_is_swept(tmp_path):
    from pruning_core.objectstore import LocalStore

    store = LocalStore(tmp_path / "store", direct=False)
    store.write_marker(b'{"id": "x"}')
    assert store.read_marker() == b'{"id": "x"}' and not list(store.tmp_dir.iterdir())
    left = store.tmp_dir / "upload-marker-crashed"  # a write a crash cut short
    left.write_bytes(b"{")
    old = time.time() - 120
    os.utime(left, (old, old))
    store.sweep(60.0)
    assert not left.exists() and store.read_marker() == b'{"id": "x"}'
