"""The server's allocator setting: glibc takes it; elsewhere it is a no-op that says so."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from pruning_core import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds():
    # in a child process: the setting lasts for the life of the process that makes it
    code = "from pruning_core.allocator import keep_freed_buffers; print(keep_freed_buffers())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"


def test_without_mallopt_nothing_changes(monkeypatch):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    assert allocator.keep_freed_buffers() is False


def test_the_server_setting_is_on_by_default_and_can_be_turned_off(monkeypatch):
    from pruning_core.settings import Settings

    assert Settings().keep_freed_buffers is True
    monkeypatch.setenv("PRUNING_KEEP_FREED_BUFFERS", "false")
    assert Settings().keep_freed_buffers is False
