# ruff: noqa: F811 - the fixtures imported from s3_fixtures are arguments here
"""A worker's input cache makes room within its bound before a fetch writes (real SeaweedFS, real tmpfs)."""

from __future__ import annotations

import pytest
from s3_fixtures import cached, random_blob, s3_env, seaweed, small_disk  # noqa: F401 - fixtures

from conftest import settings_for

pytestmark = pytest.mark.integration
MiB = 1 << 20


def test_a_fetch_makes_room_within_the_bound_before_it_writes(seaweed, s3_env, tmp_path, small_disk):
    """A bound that fits the disk (48 of 64 MiB): an idle 40 MiB input, then a job's 30 MiB one.
    Evicted only after a fetch, the idle file stayed and every fetch of the new one failed with
    ENOSPC (the job RESOURCE_EXHAUSTED), job after job, for good."""
    from pruning_core.objectstore import open_store
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    old, new = random_blob(store, tmp_path / "old", 40), random_blob(store, tmp_path / "new", 30)
    first = InputCache(store, small_disk / "cache", max_bytes=48 * MiB)
    first.path(old)
    first.release()  # that job ended: its input is idle, within the bound
    assert cached(small_disk / "cache") == {old}
    second = InputCache(store, small_disk / "cache", max_bytes=48 * MiB)
    try:
        path = second.path(new)
        assert path.stat().st_size == 30 * MiB
        assert cached(small_disk / "cache") == {new}  # the idle one made room, as the bound says
    finally:
        second.release()


def test_a_full_disk_gets_the_idle_inputs_evicted_and_the_fetch_tried_again(seaweed, s3_env, tmp_path, small_disk):
    """The disk shared with other files: within the bound (100 MiB), but not on the disk."""
    from pruning_core.objectstore import open_store
    from pruning_worker.cache import InputCache

    store = open_store(settings_for(s3_env, state_dir=str(tmp_path / "state")))
    old, new = random_blob(store, tmp_path / "old", 20), random_blob(store, tmp_path / "new", 20)
    cache = InputCache(store, small_disk / "cache", max_bytes=100 * MiB)
    cache.path(old)
    cache.release()
    with open(small_disk / "other", "wb") as f:  # something else takes 30 MiB of the disk
        f.write(b"\0" * 30 * MiB)
    cache = InputCache(store, small_disk / "cache", max_bytes=100 * MiB)
    try:
        assert cache.path(new).stat().st_size == 20 * MiB
        assert cached(small_disk / "cache") == {new}
    finally:
        cache.release()
