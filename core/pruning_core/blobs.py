"""Content-addressed artifact files on disk: ``<root>/<sha[:2]>/<sha>``.

Writers stream into a temporary file beside the blobs and rename it into place once the
sha256 is known, so a reader never sees a partial blob and memory stays flat.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import tempfile

_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_artifact_id(value: str) -> bool:
    return bool(_SHA256.fullmatch(value))


class BlobWriter:
    """Accumulates chunks into a temporary file while hashing them."""

    def __init__(self, store: BlobStore):
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="upload-")
        self._file = os.fdopen(fd, "wb")
        self.path = pathlib.Path(name)
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def commit(self) -> str:
        """Moves the finished file into place and returns its id (sha256)."""
        self.close()
        sha = self.sha256
        target = self._store.path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, target)
        return sha

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class BlobStore:
    """The artifact store rooted at one directory."""

    def __init__(self, root: os.PathLike | str):
        self.root = pathlib.Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, artifact_id: str) -> pathlib.Path:
        if not is_artifact_id(artifact_id):
            raise ValueError(f"artifact id must be 64 lowercase hex digits, got {artifact_id!r}")
        return self.root / artifact_id[:2] / artifact_id

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_file(self, source: os.PathLike | str) -> tuple[str, int]:
        """Copies a local file into the store; returns (id, size)."""
        writer = self.writer()
        try:
            with open(source, "rb") as src:
                while chunk := src.read(1 << 20):
                    writer.write(chunk)
            return writer.commit(), writer.size
        except BaseException:
            writer.discard()
            raise
