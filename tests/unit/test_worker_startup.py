"""The worker's start-up check of its artifact store (pruning_worker.startup): a store set to
another deployment's is refused before any job, a store with no marker yet is taken."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from pruning_core.objectstore import open_store
from pruning_core.settings import Settings, redacted_url
from pruning_core.store import JobStore
from pruning_worker.startup import EXIT_INVALID_SETTINGS, StoreCheckFailed, check_artifact_store


@pytest.fixture()
def deployment(redis_url, tmp_path):
    prefix = f"pruning-test-startup-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=redis_url, key_prefix=prefix, queue=prefix, state_dir=str(tmp_path / "state"))
    client = redis.Redis.from_url(redis_url)
    key = JobStore(client, prefix).keys.deployment()
    client.set(key, "ours")
    yield settings
    client.delete(key)


def _mark(settings: Settings, **marker) -> None:
    open_store(settings).write_marker(json.dumps(marker).encode())


def test_a_store_without_a_marker_or_with_ours_is_taken(deployment, caplog):
    check_artifact_store(deployment)  # a fresh store: the server writes the marker later
    assert "holds no .deployment" in caplog.text
    _mark(deployment, id="ours", key_prefix=deployment.key_prefix, redis=redacted_url(deployment.redis_url))
    check_artifact_store(deployment)


def test_a_store_marked_by_the_same_redis_and_prefix_is_taken(deployment):
    """A Redis that lost its data (and its deployment id) is still the same place."""
    _mark(deployment, id="before-the-loss", key_prefix=deployment.key_prefix, redis=redacted_url(deployment.redis_url))
    check_artifact_store(deployment)


def test_a_store_of_another_deployment_is_refused(deployment):
    _mark(deployment, id="theirs", key_prefix="production", redis="redis://prod:6379/0")
    with pytest.raises(StoreCheckFailed, match="belongs to another deployment .*key prefix production") as refused:
        check_artifact_store(deployment)
    assert refused.value.exit_code == EXIT_INVALID_SETTINGS
