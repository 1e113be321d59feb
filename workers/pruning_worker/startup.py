"""The worker's check of its artifact store before it takes a job.

A worker on a host of its own reads inputs from, and writes exports to, the artifact store its
own settings name. Set wrong (a bucket that does not exist, credentials it lacks), every job it
took failed at once: the store's answers looked like lost artifacts. Pointed at another
deployment's store (a bucket or prefix the server does not use), it would not find this
deployment's artifacts either. Both are said at start, in one line, and the worker exits.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile

import redis

from pruning_core.objectstore import DEPLOYMENT_MARKER, deployment_marker, first_line, marked_by_another, open_store
from pruning_core.settings import Settings
from pruning_core.store import JobStore

log = logging.getLogger(__name__)

EXIT_INVALID_SETTINGS = 2
EXIT_UNREACHABLE = 4  # as the server's


class StoreCheckFailed(RuntimeError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def check_directories(settings: Settings) -> None:
    """Raises StoreCheckFailed (invalid settings) when a directory the worker writes every job's
    files to cannot be made or written: the work directory, and with S3 the input cache. Set
    wrong (a path under a file, a read-only mount), the worker took every job and failed each
    at once as INTERNAL, draining the queue that healthy workers would have run."""
    where = [("PRUNING_WORK_DIR", settings.work_path)]
    if settings.artifact_store == "s3":
        where.append(("PRUNING_CACHE_DIR", settings.cache_path))
    for name, path in where:
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=path, prefix=".worker-check-")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the cache and the job directories need
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise StoreCheckFailed(
                f"invalid settings: {name} ({path}) is not a directory this worker can write: {exc.strerror or exc}",
                EXIT_INVALID_SETTINGS,
            ) from exc


def check_artifact_store(settings: Settings) -> None:
    """Raises StoreCheckFailed when the artifact store cannot be used by this deployment: the
    settings are invalid, the store does not answer (a missing bucket, refused credentials),
    or its deployment marker names another deployment's job store. A marker that is missing
    is only warned about (a server that has not run its housekeeping yet writes it)."""
    where = settings.artifact_store
    try:
        blobs = open_store(settings)
    except ValueError as exc:
        raise StoreCheckFailed(f"invalid settings: {exc}", EXIT_INVALID_SETTINGS) from exc
    try:
        blobs.probe()
        raw = blobs.read_marker()
    except Exception as exc:
        raise StoreCheckFailed(f"cannot use the artifact store ({where}): {first_line(exc)}", EXIT_UNREACHABLE) from exc
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        ours = client.get(JobStore(client, settings.key_prefix).keys.deployment())
    except redis.RedisError:
        return  # the broker's own retries say the job store is away; nothing to compare yet
    finally:
        client.close()
    if raw is None:
        if ours is not None:
            log.warning(
                "the artifact store (%s) holds no %s while the job store names a deployment: if the server "
                "uses another bucket, prefix or directory, this worker will not find its artifacts",
                where,
                DEPLOYMENT_MARKER,
            )
        return
    try:
        theirs = json.loads(raw)
    except ValueError:
        return  # unreadable: the server's housekeeping says so
    if not isinstance(theirs, dict) or ours is None:
        return
    ours_id = ours.decode() if isinstance(ours, bytes) else str(ours)
    if marked_by_another(theirs, deployment_marker(ours_id, settings)):
        raise StoreCheckFailed(
            f"the artifact store ({where}) belongs to another deployment (job store {theirs.get('redis')}, "
            f"key prefix {theirs.get('key_prefix')}): set this worker's artifact store to the server's",
            EXIT_INVALID_SETTINGS,
        )
