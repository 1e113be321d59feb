"""Fixtures and helpers of the tests on S3: a real SeaweedFS, a deployment of its own, a small real
disk, a store under a prefix of its own, blobs and what a worker's cache holds."""

from __future__ import annotations

import os
import pathlib
import subprocess
import uuid

import pytest
from seaweed import SeaweedFS

from conftest import delete_deployment, settings_for

MiB = 1 << 20


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_env(env, seaweed, tmp_path_factory):
    """A deployment of its own (key prefix, queue) with its artifacts in S3."""
    run = uuid.uuid4().hex[:8]
    values = {
        **env,
        **seaweed.env(prefix=f"test-{run}"),
        "PRUNING_KEY_PREFIX": f"pruning-s3-{run}",
        "PRUNING_QUEUE": f"pruning-s3-{run}",
        "PRUNING_STATE_DIR": str(tmp_path_factory.mktemp("server-host")),
        "PRUNING_S3_PART_SIZE": str(5 * MiB),  # several parts in flight for a 16 MiB upload
    }
    yield values
    delete_deployment(values["PRUNING_REDIS_URL"], values["PRUNING_KEY_PREFIX"], values["PRUNING_QUEUE"])


@pytest.fixture()
def small_disk(tmp_path):
    """A 64 MiB file system of its own (tmpfs; needs the right to mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def own_store(s3_env: dict, tmp_path: pathlib.Path, name: str, **overrides):
    """The deployment's S3 store under a bucket prefix of its own (``<prefix>-<name>-<random>``)."""
    from pruning_core.objectstore import open_store

    prefix = f"{s3_env['PRUNING_S3_PREFIX']}-{name}-{uuid.uuid4().hex[:6]}"
    return open_store(settings_for(s3_env, state_dir=str(tmp_path / "state"), s3_prefix=prefix, **overrides))


def random_blob(store, path: pathlib.Path, mib: int) -> str:
    """Stores ``mib`` MiB of random bytes written to ``path``; their artifact id."""
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
    return store.put_file(path)[0]


def cached(root: pathlib.Path) -> set[str]:
    """The artifacts in a worker's cache (not the records of their checks, nor their locks)."""
    return {p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}
