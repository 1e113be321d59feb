"""A worker host's content-addressed cache of job inputs: ``<cache>/<sha[:2]>/<sha>``.

A model or dataset used by many jobs (the trials of a sweep) is fetched from the artifact
store once per host. A fetch goes into a temporary file, is checked against its sha256 and
renamed into place, so a reader never sees a partial file, and concurrent worker processes on
one host at worst fetch the same file twice. With the local store there is nothing to fetch
and the store's own file is used.

Beside each file, ``.<sha>.ok`` holds what the file was when its hash was checked (inode,
size, change time; the file is read-only). A hit compares the two, which costs a ``stat``
instead of a hash: a file changed, truncated or replaced since (the change time moves with
any write, and no process can set it back) is fetched again, never handed to a job. The
``.ok`` file's modification time is the file's last use.

The cache keeps at most ``max_bytes``: the files used least recently go first, never one that
a job of any worker process on the host holds. A job holds each input it resolved under a
shared ``flock`` until its :class:`InputCache` is released (or collected); eviction takes the
lock exclusively, without waiting, before removing a file. A fetch holds its temporary file
the same way, so one left by a killed process (unlocked) is swept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import pathlib
import tempfile
import time
import weakref

from pruning_core.blobs import is_artifact_id
from pruning_core.objectstore import CorruptArtifact, LocalStore, Version, file_version, missing_errors, open_store
from pruning_core.settings import Settings

from .errors import InputDataLoss

log = logging.getLogger(__name__)

_LOST: tuple[type[BaseException], ...] = (*missing_errors(), CorruptArtifact)  # bytes no retry brings back
STALE_FETCH_S = 60.0  # an unlocked temporary file this old was left by a process that died


def _signature(fd: int) -> str:
    stat = os.fstat(fd)
    return f"{stat.st_ino} {stat.st_size} {stat.st_ctime_ns}"


# The local store's files this process hashed, each with its state then (see _check_in_place)
_checked_in_place: dict[str, str] = {}
CHECKED_IN_PLACE_MAX = 4096  # files remembered; the oldest checked is forgotten first (hashed again if used)


def _changed(artifact_id: str) -> str:
    return f"artifact {artifact_id} does not match its sha256 in the artifact store; set aside: upload the file again"


def _close_all(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())


def _try_lock(path: pathlib.Path) -> int | None:
    """An open descriptor of ``path`` locked exclusively, or None: gone, or held by a job."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (or, on a file system that cannot lock so, taken as held)
        os.close(fd)
        return None
    return fd


class InputCache:
    def __init__(self, store: LocalStore, root: os.PathLike | str, max_bytes: int):
        self.store = store
        self.root = pathlib.Path(root)
        self.max_bytes = max_bytes
        self.fetched = 0  # files fetched by this process (read by tests and logs)
        self._held: list[int] = []  # descriptors of the files this cache's job holds, shared-locked
        self._finalizer = weakref.finalize(self, _close_all, self._held)

    @classmethod
    def for_settings(cls, settings: Settings) -> InputCache:
        return cls(open_store(settings), settings.cache_path, settings.cache_max_bytes)

    def release(self) -> None:
        """Lets go of the files this cache's job holds, and evicts: what the bound could not take
        while they were held goes now, not at the host's next fetch (an idle host kept them)."""
        _close_all(self._held)
        try:
            self.evict()
        except OSError:  # as after a fetch: over the bound rather than fail the job
            log.warning("could not evict from the input cache %s", self.root, exc_info=True)

    @staticmethod
    def _ok(target: pathlib.Path) -> pathlib.Path:
        return target.with_name(f".{target.name}.ok")

    def path(self, artifact_id: str, keep: tuple[str, ...] = ()) -> pathlib.Path:
        """A local file with the artifact's bytes, fetched when this host has none that is still
        as it was checked; held until :meth:`release`. ``keep`` names other files the caller
        holds (as this process's eviction already leaves the held ones, only a hint)."""
        local = self.store.local_path(artifact_id)
        if local is not None:
            if not local.is_file():
                raise InputDataLoss(f"artifact {artifact_id} is missing in the artifact store")
            self._check_in_place(artifact_id, local)
            return local
        if not is_artifact_id(artifact_id):
            raise ValueError(f"artifact id must be 64 lowercase hex digits, got {artifact_id!r}")
        target = self.root / artifact_id[:2] / artifact_id
        if self._hold_if_checked(target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # One fetch of an id at a time on the host: the others wait, then find it checked.
        with self._fetch_lock(target):
            if self._hold_if_checked(target):
                return target
            fd = self._fetch_with_room(artifact_id, target, keep)
        self._held.append(fd)
        self.fetched += 1
        log.info("fetched artifact %s into the cache (%d bytes)", artifact_id, os.fstat(fd).st_size)
        try:
            self.evict(keep=(artifact_id, *keep))
        except OSError:  # a file system without these locks, say: over the bound rather than fail the job
            log.warning("could not evict from the input cache %s", self.root, exc_info=True)
        return target

    @staticmethod
    @contextlib.contextmanager
    def _fetch_lock(target: pathlib.Path):
        """The host's lock on fetching ``target``: its ``.lock`` file, held exclusively. The
        eviction removes the lock files of ids no longer cached (one per id ever fetched stayed
        for good), so a lock taken on a file removed meanwhile is taken again on the new one."""
        path = target.with_name(f".{target.name}.lock")
        while True:
            with open(path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    same = os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield
                    return

    def _fetch_with_room(self, artifact_id: str, target: pathlib.Path, keep: tuple[str, ...]) -> int:
        """:meth:`_fetch`, the bound made to hold the incoming file first (eviction after the
        fetch alone let the cache take its bound plus the file, so a bound that fits the disk
        did not: every later fetch of a file the disk could not take beside the idle ones
        failed with ENOSPC, for good); a disk full all the same (shared with other files) gets
        the cache's idle files evicted and the fetch tried once more."""
        try:
            room = self.store.size(artifact_id)
        except Exception:  # noqa: BLE001 - the fetch says what is wrong (missing, store down)
            room = 0
        self._evict_quietly(keep=(artifact_id, *keep), room=room)
        try:
            return self._fetch(artifact_id, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if not self._evict_quietly(keep=(artifact_id, *keep), room=self.max_bytes + 1):
                raise  # nothing idle to free: the disk is full of other things
            log.warning("the disk of the input cache %s was full: evicted its idle files, fetching again", self.root)
            return self._fetch(artifact_id, target)

    def _evict_quietly(self, keep: tuple[str, ...], room: int) -> int:
        try:
            return self.evict(keep=keep, room=room)
        except OSError:  # as after a fetch: over the bound rather than fail the job
            log.warning("could not evict from the input cache %s", self.root, exc_info=True)
            return 0

    def _check_in_place(self, artifact_id: str, local: pathlib.Path) -> None:
        """The local store's own file, used where it is: hashed once per process and state of
        the file (inode, size, change time), as a fetched file is at its fetch. One that no
        longer hashes to its id (changed behind the service's back) is set aside, so that an
        upload of the content stores it anew, and is the job's DATA_LOSS, never its input."""
        with open(local, "rb") as f:
            signature = _signature(f.fileno())
            if _checked_in_place.get(str(local)) == signature:
                return
            if hashlib.file_digest(f, "sha256").hexdigest() == artifact_id:
                _checked_in_place.pop(str(local), None)  # last in the order: the oldest goes first
                _checked_in_place[str(local)] = signature
                while len(_checked_in_place) > CHECKED_IN_PLACE_MAX:
                    del _checked_in_place[next(iter(_checked_in_place))]
                return
            read = file_version(os.fstat(f.fileno()))
        # the file hashed, never one stored again meanwhile (the quarantine looks at its inode)
        self._set_aside(artifact_id, read)
        raise InputDataLoss(_changed(artifact_id))

    def _set_aside(self, artifact_id: str, version: Version | None = None) -> None:
        try:
            where = self.store.quarantine(artifact_id, version)
        except FileNotFoundError:
            return  # another job found it first
        except Exception:
            log.warning("could not set artifact %s aside", artifact_id, exc_info=True)
            return
        if where is None:
            return  # stored again since it was read: those bytes are someone's good upload
        log.error("artifact %s does not hash to its id in the artifact store; set aside: %s", artifact_id, where)

    def _fetch(self, artifact_id: str, target: pathlib.Path) -> int:
        """Fetches the artifact to ``target``, checked; returns its descriptor, held."""
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # held from the start: a sweep or eviction needs it alone
            self.store.fetch(artifact_id, pathlib.Path(name))
            os.chmod(name, 0o444)
            os.replace(name, target)  # the same file, held: the job's input from now on
            self._write_ok(target, _signature(fd))
        except _LOST as exc:
            os.close(fd)
            pathlib.Path(name).unlink(missing_ok=True)
            if not isinstance(exc, CorruptArtifact):
                # A store that does not answer is an outage, not a loss: a bucket that is missing
                # (a worker set to the wrong one) answers 404 to every GET as to a lost object,
                # and would fail every job this worker takes with DATA_LOSS.
                self.store.probe()
            if isinstance(exc, CorruptArtifact):
                self._set_aside(artifact_id, exc.version)
                raise InputDataLoss(_changed(artifact_id)) from None
            raise InputDataLoss(f"artifact {artifact_id} is missing in the artifact store") from None
        except BaseException:
            os.close(fd)
            pathlib.Path(name).unlink(missing_ok=True)
            raise
        return fd

    def _write_ok(self, target: pathlib.Path, signature: str) -> None:
        ok = self._ok(target)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".ok-")
        with os.fdopen(fd, "w") as out:
            out.write(signature)
        os.replace(name, ok)

    def _hold_if_checked(self, target: pathlib.Path) -> bool:
        """Holds ``target`` when it is the file whose hash was checked, unchanged since."""
        try:
            fd = os.open(target, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # an eviction holds it only while it removes it
            signature = _signature(fd)
            held = os.stat(target).st_ino == os.fstat(fd).st_ino  # not removed or replaced meanwhile
            ok = self._ok(target)
            if held and ok.read_text() == signature:
                os.utime(ok)  # most recently used
                self._held.append(fd)
                return True
            if held:
                log.warning("cached artifact %s changed since its hash was checked: fetching it again", target.name)
        except FileNotFoundError:  # no record of its check (being fetched, or a cache from before)
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return False

    def evict(self, keep: tuple[str, ...] = (), room: int = 0) -> int:
        """Removes the least recently used files until the cache fits ``max_bytes`` (with
        ``room`` bytes to spare, for a file about to be fetched), and the temporary files of
        fetches that died."""
        entries = []
        now = time.time()
        for path in self.root.glob("??/*"):
            if path.name.startswith((".fetch-", ".ok-")):  # swept by a fetch a minute after their writer died
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime > STALE_FETCH_S and (fd := _try_lock(path)) is not None:
                        path.unlink(missing_ok=True)
                        os.close(fd)
                continue
            if path.name.startswith(".") and path.name.endswith(".lock"):
                # the fetch lock of an id no longer cached (evicted, or never fetched: missing)
                with contextlib.suppress(FileNotFoundError):
                    blob = path.with_name(path.name[1 : -len(".lock")])
                    if (
                        not blob.exists()
                        and now - path.stat().st_mtime > STALE_FETCH_S
                        and (fd := _try_lock(path)) is not None
                    ):
                        try:
                            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not made anew since it was opened
                                path.unlink(missing_ok=True)
                        finally:
                            os.close(fd)
                continue
            if not is_artifact_id(path.name):
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            try:
                used = self._ok(path).stat().st_mtime
            except FileNotFoundError:
                used = 0.0  # never checked here: first to go
            entries.append((used, size, path))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total + room <= self.max_bytes:
                break
            if path.name in keep or (fd := _try_lock(path)) is None:
                continue  # held by a job of this or another worker process
            try:
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    continue  # fetched again since it was opened: that one is new
                self._ok(path).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue
            finally:
                os.close(fd)
            total -= size
            removed += 1
        return removed
