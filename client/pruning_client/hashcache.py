"""The sha256 of files the SDK hashed before an upload, kept while each file is unchanged.

An upload announces its file's sha256 in its header, so a server that holds the content
answers after the header; hashing a GiB to learn it costs a pass over the file (about 0.7 s
here). This cache keeps the sha256 of each file hashed, under its device and inode, with its
size, modification and change times in nanoseconds: the next upload of the file, unchanged,
announces it without reading it. Any write to the file, a ``chmod``, a rename or a new file in
its place changes the change time (which no program can set back), and the cache then misses.

A file whose times are too close to the moment it was hashed is not kept (git's "racy" rule):
file systems stamp times at the granularity of a clock tick, so a write in the same tick as
the hash could leave the times as they were. An entry wrong all the same is caught where it
matters: a server that does not hold the announced content checks it against the bytes sent.

The cache is an SQLite file (``$PRUNING_HASH_CACHE``; by default
``$XDG_CACHE_HOME/pruning/hashes.sqlite3``, else ``~/.cache/pruning/``; ``off`` turns it off)
of at most ``MAX_ENTRIES`` files. It is only a shortcut: one that cannot be opened, read or
written is used as a miss, never an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sqlite3
import time

__all__ = ["MAX_ENTRIES", "RACY_S", "HashCache", "default_path"]

log = logging.getLogger(__name__)

MAX_ENTRIES = 4096
RACY_S = 2.0  # a file changed less than this before its hash began is not kept
_SCHEMA = """CREATE TABLE IF NOT EXISTS hashes (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, used REAL NOT NULL,
    PRIMARY KEY (dev, ino))"""


def default_path() -> pathlib.Path | None:
    """Where the cache lives: ``$PRUNING_HASH_CACHE`` (``off`` or empty: nowhere), else the
    user's cache directory."""
    configured = os.environ.get("PRUNING_HASH_CACHE")
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "false", "no") else pathlib.Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "pruning" / "hashes.sqlite3"


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class HashCache:
    """The cache at ``path`` (None: a cache that always misses)."""

    def __init__(self, path: os.PathLike[str] | str | None) -> None:
        self.path = pathlib.Path(path) if path is not None else None

    @contextlib.contextmanager
    def _db(self):  # type: ignore[no-untyped-def]
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=1.0)
        try:
            with db:  # one transaction, committed on the way out
                db.execute(_SCHEMA)
                yield db
        finally:
            db.close()

    def get(self, st: os.stat_result) -> str | None:
        """The sha256 kept for the file ``st`` describes, if it is unchanged since."""
        if self.path is None or not self.path.exists():
            return None
        dev, ino, size, mtime_ns, ctime_ns = _identity(st)
        try:
            with self._db() as db:
                row = db.execute(
                    "SELECT sha256 FROM hashes WHERE dev=? AND ino=? AND size=? AND mtime_ns=? AND ctime_ns=?",
                    (dev, ino, size, mtime_ns, ctime_ns),
                ).fetchone()
                if row is not None:
                    db.execute("UPDATE hashes SET used=? WHERE dev=? AND ino=?", (time.time(), dev, ino))
        except (OSError, sqlite3.Error) as error:
            log.debug("hash cache %s not read: %s", self.path, error)
            return None
        return row[0] if row is not None else None

    def put(self, before: os.stat_result, after: os.stat_result, sha256: str, started_ns: int) -> bool:
        """Keeps ``sha256`` for the file, hashed from ``started_ns`` (``time.time_ns()``) on,
        when ``before`` and ``after`` (its stat before and after the hash) are the same file
        unchanged and its times are at least ``RACY_S`` older than the hash; True if kept."""
        if self.path is None or _identity(before) != _identity(after):
            return False
        if max(before.st_mtime_ns, before.st_ctime_ns) > started_ns - int(RACY_S * 1e9):
            return False
        try:
            with self._db() as db:
                db.execute(
                    "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*_identity(before), sha256, time.time()),
                )
                db.execute(
                    "DELETE FROM hashes WHERE rowid IN (SELECT rowid FROM hashes ORDER BY used DESC LIMIT -1 OFFSET ?)",
                    (MAX_ENTRIES,),
                )
        except (OSError, sqlite3.Error) as error:
            log.debug("hash cache %s not written: %s", self.path, error)
            return False
        return True

    def forget(self, st: os.stat_result) -> None:
        """Drops the entry of the file ``st`` describes (its sha256 was refused)."""
        if self.path is None or not self.path.exists():
            return
        with contextlib.suppress(OSError, sqlite3.Error), self._db() as db:
            db.execute("DELETE FROM hashes WHERE dev=? AND ino=?", (st.st_dev, st.st_ino))
