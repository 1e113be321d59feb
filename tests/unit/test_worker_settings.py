"""A worker started as the README says (``celery -A pruning_worker.app worker``) with a setting
out of its bounds stops as the server and `pruning up` do: exit 2 and one line naming the
variable, not Celery's "Unable to load celery application" with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_worker_with_an_invalid_setting_says_so_in_one_line(tmp_path):
    env = {
        **os.environ,
        "PRUNING_CHUNK_SIZE": "1",
        "PRUNING_STATE_DIR": str(tmp_path),
        "PRUNING_QUEUE": "pruning-test-invalid-settings",
    }
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "pruning_worker.app", "worker", "--pool=solo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "pruning worker: invalid settings: PRUNING_CHUNK_SIZE: chunk_size must be in [1024, 4 MiB], got 1"
    ], done.stderr
