"""The server warns at start when its job store's Redis keeps nothing on disk: a restart of
that Redis would lose every job. Each case is a throwaway redis-server of its own."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
from redis_servers import throwaway_redis

from pruning_server.main import _where, volatile_redis


def _volatile(url: str) -> str | None:
    async def check() -> str | None:
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await volatile_redis(client)
        finally:
            await client.aclose()

    return asyncio.run(check())


@pytest.mark.parametrize(
    ("appendonly", "save", "volatile"),
    [("no", "", True), ("yes", "", False), ("no", "60 1", False)],
)
def test_a_redis_that_keeps_nothing_on_disk_is_named(tmp_path, appendonly, save, volatile):
    with throwaway_redis(tmp_path, "--save", "", "--appendonly", appendonly) as url:
        redis.Redis.from_url(url).config_set("save", save)  # set here: save points given as arguments did not stick
        assert (_volatile(url) == "appendonly no, no save points") is volatile


def test_a_redis_that_refuses_config_is_not_judged(tmp_path):
    with throwaway_redis(tmp_path, "--save", "", "--appendonly", "no", "--rename-command", "CONFIG", '""') as url:
        assert _volatile(url) is None


def test_the_warning_names_the_redis_without_its_password():
    assert _where("redis://:s3cret@10.0.0.5:6380/2") == "redis://10.0.0.5:6380/2"
    assert _where("rediss://user:pw@[::1]:6379/0") == "rediss://[::1]:6379/0"
    # a database picked in the query is another job store: it stays
    assert _where("unix://:pw@/run/redis.sock?db=2") != _where("unix://:pw@/run/redis.sock?db=3")
    assert _where("redis://h:6379?db=13&socket_timeout=5") == "redis://h:6379?db=13"


def _evicting(url: str) -> str | None:
    from pruning_server.main import evicting_redis

    async def check() -> str | None:
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await evicting_redis(client)
        finally:
            await client.aclose()

    return asyncio.run(check())


@pytest.mark.parametrize(
    ("maxmemory", "policy", "said"),
    [
        ("100mb", "allkeys-lru", "maxmemory 104857600, maxmemory-policy allkeys-lru"),
        ("100mb", "volatile-ttl", "maxmemory 104857600, maxmemory-policy volatile-ttl"),
        ("100mb", "noeviction", None),
        ("0", "allkeys-lru", None),  # no memory limit: nothing is evicted
    ],
)
def test_a_redis_that_may_evict_keys_is_named(tmp_path, maxmemory, policy, said):
    with throwaway_redis(tmp_path, "--save", "", "--maxmemory", maxmemory, "--maxmemory-policy", policy) as url:
        assert _evicting(url) == said


def test_a_start_up_error_of_the_s3_store_keeps_its_error_code():
    """The one line cut the store's answer at its first line, and with it the <Code> that says
    which problem a 404 or 403 is (NoSuchBucket, SignatureDoesNotMatch)."""
    from pruning_core.objectstore import first_line

    error = OSError(
        "Generic S3 error: Error performing list request: Received redirect without LOCATION, this normally "
        'indicates an incorrectly configured region\\n  404 Not Found\n<?xml version="1.0"?>\n<Error><Code>'
        "NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>"
    )
    line = first_line(error)
    assert line.endswith("(NoSuchBucket)") and "\n" not in line
    assert first_line(OSError("Connection refused")) == "Connection refused"
