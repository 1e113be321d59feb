"""The expiry of the bytes set aside is one step of the housekeeping pass; a store
that refuses its deletes (S3 Object Lock on quarantine/, a policy keeping it for forensics, a
read-only quarantine directory) must not stop the rest of the pass, pass after pass, as the
abort of stale multipart uploads does not."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from conftest import delete_keys, settings_for

pytestmark = pytest.mark.integration


def test_a_set_aside_expiry_refused_leaves_the_rest_of_the_pass(env, tmp_path, monkeypatch):
    from pruning_core.objectstore import open_store
    from pruning_core.store import AsyncJobStore
    from pruning_server import reaper

    prefix = f"set-aside-hk-{uuid.uuid4().hex[:8]}"
    settings = settings_for(
        env,
        key_prefix=prefix,
        artifact_store="local",
        artifact_dir=str(tmp_path / "artifacts"),
        state_dir=str(tmp_path / "state"),
        sweep_min_age_s=0,
        artifact_retention_s=0,
    )
    blobs = open_store(settings)

    async def run() -> dict[str, int]:
        jobs = AsyncJobStore.from_url(settings.redis_url, settings.key_prefix)
        try:
            return await reaper.enforce_retention(jobs, blobs, settings)
        finally:
            await jobs.redis.aclose()

    try:
        (tmp_path / "older").write_bytes(b"a blob from before the job store")
        blobs.put_file(tmp_path / "older")
        asyncio.run(run())  # the job store is born (its first pass over a blob records when)
        time.sleep(0.05)
        (tmp_path / "orphan").write_bytes(b"bytes no record points to")
        orphan = blobs.put_file(tmp_path / "orphan")[0]

        def refused(before):
            raise PermissionError(13, "Permission denied", "quarantine/" + "a" * 64 + ".1")

        monkeypatch.setattr(blobs, "expire_set_aside", refused)
        try:
            counts = asyncio.run(run())
        except PermissionError:
            counts = None
        assert counts is not None, "the pass stopped at the set-aside expiry"
        assert counts["blobs"] == 1 and not blobs.exists(orphan)
    finally:
        delete_keys(settings.redis_url, prefix)
