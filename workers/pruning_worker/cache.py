"""A worker host's content-addressed cache of job inputs: ``<cache>/<sha[:2]>/<sha>``.

A model or dataset used by many jobs (the trials of a sweep) is fetched from the artifact
store once per host. A fetch goes into a temporary file, is checked against its sha256 and
renamed into place, so a reader never sees a partial file, and concurrent worker processes on
one host at worst fetch the same file twice. The cache keeps at most ``max_bytes``: the files
used least recently go first, never the ones the current job holds. With the local store
there is nothing to fetch and the store's own file is used.
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile

from pruning_core.blobs import is_artifact_id
from pruning_core.objectstore import LocalStore, open_store
from pruning_core.settings import Settings

from .errors import JobInputError

log = logging.getLogger(__name__)


class InputCache:
    def __init__(self, store: LocalStore, root: os.PathLike | str, max_bytes: int):
        self.store = store
        self.root = pathlib.Path(root)
        self.max_bytes = max_bytes
        self.fetched = 0  # files fetched by this process (read by tests and logs)

    @classmethod
    def for_settings(cls, settings: Settings) -> InputCache:
        return cls(open_store(settings), settings.cache_path, settings.cache_max_bytes)

    def path(self, artifact_id: str, keep: tuple[str, ...] = ()) -> pathlib.Path:
        """A local file with the artifact's bytes, fetched when this host has none. ``keep``
        names other files the caller holds, which eviction leaves alone."""
        local = self.store.local_path(artifact_id)
        if local is not None:
            return local
        if not is_artifact_id(artifact_id):
            raise ValueError(f"artifact id must be 64 lowercase hex digits, got {artifact_id!r}")
        target = self.root / artifact_id[:2] / artifact_id
        if target.is_file():
            os.utime(target)  # most recently used
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
        os.close(fd)
        try:
            self.store.fetch(artifact_id, pathlib.Path(name))
            os.replace(name, target)
        except FileNotFoundError:
            pathlib.Path(name).unlink(missing_ok=True)
            raise JobInputError(f"artifact {artifact_id} is missing from the artifact store") from None
        except BaseException:
            pathlib.Path(name).unlink(missing_ok=True)
            raise
        self.fetched += 1
        log.info("fetched artifact %s into the cache (%d bytes)", artifact_id, target.stat().st_size)
        self.evict(keep=(artifact_id, *keep))
        return target

    def evict(self, keep: tuple[str, ...] = ()) -> int:
        """Removes the least recently used files until the cache fits ``max_bytes``."""
        entries = []
        for path in self.root.glob("??/*"):
            if is_artifact_id(path.name):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                entries.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path.name in keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed
