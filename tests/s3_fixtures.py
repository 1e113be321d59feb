"""Fixtures of the tests of a worker host on S3: a real SeaweedFS, a deployment of its own, a small real disk."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from seaweed import SeaweedFS

from conftest import delete_deployment

MiB = 1 << 20


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_env(env, seaweed, tmp_path_factory):
    run = uuid.uuid4().hex[:8]
    values = {
        **env,
        **seaweed.env(prefix=f"test-{run}"),
        "PRUNING_KEY_PREFIX": f"pruning-s3c-{run}",
        "PRUNING_QUEUE": f"pruning-s3c-{run}",
        "PRUNING_STATE_DIR": str(tmp_path_factory.mktemp("server-host")),
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
