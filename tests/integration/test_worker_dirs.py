# ruff: noqa: F811 - the fixtures imported from s3_fixtures are arguments here
"""A worker whose work or cache directory cannot be written does not start (real Celery worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from s3_fixtures import s3_env, seaweed, small_disk  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.mark.parametrize("setting", ["PRUNING_CACHE_DIR", "PRUNING_WORK_DIR"])
def test_a_worker_whose_directories_cannot_be_written_does_not_start(seaweed, s3_env, tmp_path, setting):
    """Started, it took every job and failed each at once as INTERNAL ("NotADirectoryError"),
    draining the queue while the workers set right sat idle."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {
        **os.environ,
        **s3_env,
        "PRUNING_STATE_DIR": str(tmp_path / "state"),
        "PRUNING_WORK_DIR": str(tmp_path / "work"),
        "PRUNING_CACHE_DIR": str(tmp_path / "cache"),
        setting: str(blocker / "dir"),
    }
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "pruning_worker.app", "worker", "--pool=solo"]
    command += ["-Q", s3_env["PRUNING_QUEUE"], "--without-gossip", "--without-mingle"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and "ready." not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.3)
        said = log_path.read_text()
        assert proc.poll() == 2, said[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert f"the worker cannot start: invalid settings: {setting}" in said
    assert "ready." not in said
