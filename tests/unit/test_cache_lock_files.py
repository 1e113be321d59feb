"""The eviction removes a stale fetch lock by name after locking the file it opened;
when that file was removed and made anew in between (another eviction, then a fetch that holds
the new one), the name is the new lock, held: removing it lets a third process fetch the same
id beside the one fetching it."""

from __future__ import annotations

import fcntl
import os
import time

from pruning_worker import cache as cache_module
from pruning_worker.cache import InputCache


def test_an_eviction_leaves_a_lock_file_made_anew_after_it_opened_the_old_one(tmp_path, monkeypatch):
    artifact_id = "ab" * 32
    root = tmp_path / "cache"
    (root / artifact_id[:2]).mkdir(parents=True)
    lock = root / artifact_id[:2] / f".{artifact_id}.lock"
    lock.write_bytes(b"")
    past = time.time() - 2 * cache_module.STALE_FETCH_S
    os.utime(lock, (past, past))  # the lock of an id evicted long ago
    held = []
    real_try_lock = cache_module._try_lock

    def interleaved(path):
        if path != lock:
            return real_try_lock(path)
        fd = os.open(path, os.O_RDONLY)  # this eviction opened the old lock file...
        os.unlink(path)  # ...another eviction removed it meanwhile...
        new = os.open(path, os.O_RDWR | os.O_CREAT)  # ...and a fetch made a new one and holds it
        fcntl.flock(new, fcntl.LOCK_EX)
        held.append((new, os.fstat(new).st_ino))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old file: free
        return fd

    monkeypatch.setattr(cache_module, "_try_lock", interleaved)
    InputCache(store=None, root=root, max_bytes=1 << 30).evict()
    new, inode = held[0]
    try:
        assert lock.exists() and os.stat(lock).st_ino == inode, "the lock a fetch holds was removed"
    finally:
        os.close(new)
