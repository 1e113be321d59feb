# ruff: noqa: F811 - the fixtures imported from s3_fixtures are arguments here
"""A worker's input cache removes the fetch locks of ids it no longer holds (real SeaweedFS)."""

from __future__ import annotations

import os
import time

import pytest
from s3_fixtures import cached, random_blob, s3_env, seaweed, small_disk  # noqa: F401 - fixtures

from conftest import settings_for

pytestmark = pytest.mark.integration
MiB = 1 << 20


def test_the_fetch_locks_of_ids_no_longer_cached_do_not_pile_up(seaweed, s3_env, tmp_path):
    """One ``.<id>.lock`` file per id ever fetched stayed in the cache forever."""
    from pruning_core.objectstore import open_store
    from pruning_worker import cache as cache_module
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    ids = []
    for i in range(40):
        (tmp_path / f"b{i}").write_bytes(os.urandom(1000))
        ids.append(store.put_file(tmp_path / f"b{i}")[0])
    root = tmp_path / "cache"
    cache = InputCache(store, root, max_bytes=2500)
    for n, artifact_id in enumerate(ids):
        cache.path(artifact_id)
        cache.release()
        if n % 10 == 9:  # time passes: the locks are older than a fetch that died
            past = time.time() - 2 * cache_module.STALE_FETCH_S
            for lock in root.glob("??/.*.lock"):
                os.utime(lock, (past, past))
    locks = list(root.glob("??/.*.lock"))
    assert len(cached(root)) <= 2
    assert len(locks) <= 12, f"{len(locks)} lock files for {len(cached(root))} cached inputs"
    # the ids still fetch, and one at a time: the lock of a cached id is the one used
    again = InputCache(store, root, max_bytes=2500)
    assert again.path(ids[0]).read_bytes() == (tmp_path / "b0").read_bytes()
    again.release()
