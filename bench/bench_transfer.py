"""Upload/download throughput and server memory against upload size, measured side by side.

Starts a real server process (against the Redis in $PRUNING_REDIS_URL, default
redis://127.0.0.1:6379/9, under a throwaway key prefix), uploads a small and a large .npz
dataset through the SDK, samples the server's resident memory while each upload runs, then
downloads both. Prints MB/s for each direction and the ratio of the memory growth for the
large upload to the small one next to the ratio of their sizes: flat memory means the first
ratio stays near 1 while the second is large.

Usage: python bench/bench_transfer.py [--small-mb 32] [--large-mb 512]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import psutil
import redis

from pruning_client import Client


def make_npz(path: pathlib.Path, megabytes: int) -> pathlib.Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(megabytes, 1024, 1024), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.zeros(megabytes), x_test=x[:1], y_test=np.zeros(1))
    return path


class PeakRss(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.done = psutil.Process(pid), 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=32)
    parser.add_argument("--large-mb", type=int, default=512)
    args = parser.parse_args()
    url = os.environ.get("PRUNING_REDIS_URL", "redis://127.0.0.1:6379/9")
    prefix = f"pruning-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        env = {
            **os.environ,
            "PRUNING_REDIS_URL": url,
            "PRUNING_KEY_PREFIX": prefix,
            "PRUNING_QUEUE": prefix,
            "PRUNING_STATE_DIR": str(tmp / "state"),
            "PRUNING_MAX_UPLOAD_BYTES": str(8 << 30),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "pruning_server", "--listen", "127.0.0.1:0", "--port-file", str(tmp / "port")],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not (tmp / "port").exists() or not (tmp / "port").read_text():
                time.sleep(0.1)
            target = f"127.0.0.1:{(tmp / 'port').read_text()}"
            rows = []
            with Client(target, timeout=600) as client:
                client.wait_ready(30)
                for label, mb in (("small", args.small_mb), ("large", args.large_mb)):
                    path = make_npz(tmp / f"{label}.npz", mb)
                    size = path.stat().st_size
                    before = psutil.Process(server.pid).memory_info().rss
                    sampler = PeakRss(server.pid)
                    sampler.start()
                    started = time.perf_counter()
                    artifact = client.upload_dataset(path)
                    up_s = time.perf_counter() - started
                    growth = max(0, sampler.stop() - before)
                    started = time.perf_counter()
                    client.download(artifact.id, tmp / f"{label}.back", resume=False)
                    down_s = time.perf_counter() - started
                    rows.append((label, size, size / up_s / 1e6, size / down_s / 1e6, growth))
                    path.unlink()
                    (tmp / f"{label}.back").unlink()
        finally:
            server.terminate()
            server.wait()
            r = redis.Redis.from_url(url)
            keys = list(r.scan_iter(f"{prefix}*"))
            if keys:
                r.delete(*keys)
    print(f"{'upload':8}{'bytes':>14}{'up MB/s':>10}{'down MB/s':>11}{'server RSS growth':>20}")
    for label, size, up, down, growth in rows:
        print(f"{label:8}{size:>14,}{up:>10.0f}{down:>11.0f}{growth / 2**20:>17.1f} MiB")
    (_, small, *_, g_small), (_, large, *_, g_large) = rows
    print(
        f"size ratio large/small: {large / small:.1f}x; "
        f"server memory growth ratio: {(g_large + 2**20) / (g_small + 2**20):.2f}x (1 MiB floor)"
    )


if __name__ == "__main__":
    main()
