"""Whether a directory's file system takes O_DIRECT (tmpfs and some others refuse it)."""

from __future__ import annotations

import os
import pathlib

from pruning import files


def direct_allowed(directory: pathlib.Path) -> bool:
    if not files._O_DIRECT:
        return False
    probe = directory / f"direct-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | files._O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True
