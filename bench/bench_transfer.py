"""Upload/download throughput of the service against a bare grpc.aio echo, per artifact backend.

In one run, for each backend (``local``: the artifact directory; ``s3``: a SeaweedFS started
here on free ports), with client and server in separate processes:

* a bare grpc.aio server process that only receives (upload) or sends (download) the same
  bytes in 1 MiB chunks: the wire's speed on this machine;
* the service (a real ``pruning_server`` process, against the Redis in $PRUNING_REDIS_URL,
  default redis://127.0.0.1:6379/9, under a throwaway key prefix): the SDK uploads a .npz
  dataset (sha256 and model checks included) and downloads it back to a file (checked by the
  CRC-32 the server recorded, the SDK's default), and again checked by its sha256
  (``verify="sha256"``); the upload as the SDK makes it by default (the file hashed first, its
  sha256 announced), the same content uploaded again (held: answered after the header) and,
  as a new artifact, the upload checked on the way (``hash_first=False``: the CRC-32);
* the same download to a client that only counts the bytes (no check, no file): the
  server's side alone;
* the disk alone: the same bytes copied to a new file beside the server's artifacts, in
  1 MiB writes, and fsynced once (what the local backend must do with an upload before it
  answers; its ceiling), and read past the page cache (the ceiling of a download of a file
  the page cache does not hold, as an upload written past it is not);
* with ``s3``, a raw S3 client (obstore) PUT (multipart, from the file) and GET (to a file) of
  the same bytes;
* the service's peak RSS growth over its RSS before the round while it uploads and downloads
  (the largest of the rounds; a 64 MiB upload and download first warm the server up, so what
  it sets up once is not counted).

Prints medians of ``--repeat`` rounds and the service/echo ratios, then the CPU seconds per GiB
of each end (the bench process as the client; the echo's or the service's server process) for
the echo's and the service's uploads and downloads: where both ends share the machine's cores,
their sum bounds the ratios. The client's figure for the service includes the RSS sampler's
thread (a poll every 5 ms), and neither counts Redis or, for S3, SeaweedFS.

``--writes direct,plain`` adds rows with both ends writing through the page cache (the server
with ``PRUNING_DIRECT_WRITES=false``, the SDK without ``O_DIRECT``), for a side-by-side view.

Usage: python bench/bench_transfer.py [--mb 1024] [--backend local,s3] [--repeat 3] [--writes direct,plain]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import psutil
import redis

from pruning import files
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
MiB = 1 << 20
direct_flag = files._O_DIRECT
_UP, _DOWN = "/echo.Echo/Upload", "/echo.Echo/Download"


def make_npz(path: pathlib.Path, megabytes: int) -> pathlib.Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(megabytes, 1024, 1024), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.zeros(megabytes), x_test=x[:1], y_test=np.zeros(1))
    return path


# -- the bare echo (its own process) ---------------------------------------------------------


async def _echo_server(port_file: str) -> None:
    async def upload(requests, context):
        n = 0
        async for chunk in requests:
            n += len(chunk)
        return str(n).encode()

    async def download(request, context):
        size = int(request)
        block = os.urandom(MiB)
        for offset in range(0, size, MiB):
            yield block[: min(MiB, size - offset)]

    handler = grpc.method_handlers_generic_handler(
        "echo.Echo",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Download": grpc.unary_stream_rpc_method_handler(download),
        },
    )
    options = [("grpc.max_receive_message_length", 8 * MiB), ("grpc.max_send_message_length", 8 * MiB)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pathlib.Path(port_file).write_text(str(port))
    await server.wait_for_termination()


def echo_round(target: str, path: pathlib.Path, server: psutil.Process, results: dict[str, list[float]]) -> None:
    """Seconds (and CPU seconds of each end) to send the file's bytes in 1 MiB chunks, and to
    receive as many."""
    size = path.stat().st_size
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 8 * MiB)]) as channel:
        upload = channel.stream_unary(_UP)
        download = channel.unary_stream(_DOWN)

        def chunks():
            with open(path, "rb") as f:
                while data := f.read(MiB):
                    yield data

        with timed(results, "up", server):
            assert int(upload(chunks())) == size
        with timed(results, "down", server):
            assert sum(len(c) for c in download(str(size).encode())) == size


# -- measurement helpers ---------------------------------------------------------------------


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


def _cpu_s(process: psutil.Process | None = None) -> float:
    if process is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    times = process.cpu_times()
    return times.user + times.system


@contextlib.contextmanager
def timed(results: dict[str, list[float]], name: str, server: psutil.Process) -> Iterator[None]:
    """Appends the block's seconds to ``results[name]``, and the CPU seconds it cost this
    process (the client) and the server process to ``name + "_client_cpu"`` and
    ``name + "_server_cpu"``."""
    wall, client, served = time.perf_counter(), _cpu_s(), _cpu_s(server)
    yield
    results[name].append(time.perf_counter() - wall)
    results[f"{name}_client_cpu"].append(_cpu_s() - client)
    results[f"{name}_server_cpu"].append(_cpu_s(server) - served)


def _wait_port(path: pathlib.Path, process: subprocess.Popen) -> int:
    while not path.exists() or not path.read_text():
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
        time.sleep(0.05)
    return int(path.read_text())


def disk_round(path: pathlib.Path, directory: pathlib.Path) -> float:
    """Seconds to copy ``path`` to a new file in ``directory`` in 1 MiB writes, fsynced once."""
    target = directory / f"disk-{uuid.uuid4().hex}"
    started = time.perf_counter()
    with open(path, "rb") as source, open(target, "wb") as out:
        while data := source.read(MiB):
            out.write(data)
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def disk_read_round(path: pathlib.Path) -> float:
    """Seconds to read ``path`` from the disk past the page cache (``O_DIRECT``, 4 MiB reads
    into one aligned buffer): the ceiling of a download of a file not in the page cache."""
    import mmap

    buffer = mmap.mmap(-1, 4 * MiB)
    fd = os.open(path, os.O_RDONLY | direct_flag)
    try:
        started = time.perf_counter()
        while os.readv(fd, [buffer]) == len(buffer):
            pass
        return time.perf_counter() - started
    finally:
        os.close(fd)


def raw_s3_round(seaweed, path: pathlib.Path, back: pathlib.Path) -> tuple[float, float]:
    import obstore

    store = seaweed.object_store(prefix="raw")
    key = uuid.uuid4().hex
    started = time.perf_counter()
    obstore.put(store, key, path)  # obstore's defaults: 5 MB parts, 12 in flight
    up_s = time.perf_counter() - started
    started = time.perf_counter()
    with open(back, "wb") as out:
        for part in obstore.get(store, key).stream(min_chunk_size=8 * MiB):
            out.write(part)
    down_s = time.perf_counter() - started
    obstore.delete(store, key)
    return up_s, down_s


def bench_backend(
    backend: str, args, tmp: pathlib.Path, path: pathlib.Path, client_dir: pathlib.Path, *, direct: bool = True
) -> dict[str, list[float]]:
    url = os.environ.get("PRUNING_REDIS_URL", "redis://127.0.0.1:6379/9")
    prefix = f"pruning-bench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PRUNING_REDIS_URL": url,
        "PRUNING_KEY_PREFIX": prefix,
        "PRUNING_QUEUE": prefix,
        "PRUNING_STATE_DIR": str(tmp / f"state-{backend}-{'direct' if direct else 'plain'}"),
        "PRUNING_MAX_UPLOAD_BYTES": str(8 << 30),
        "PRUNING_MAX_DECOMPRESSED_BYTES": str(16 << 30),
        "PRUNING_DIRECT_WRITES": str(direct).lower(),
    }
    seaweed = None
    if backend == "s3":
        from seaweed import SeaweedFS

        seaweed = SeaweedFS(tmp / "seaweed")
        env.update(seaweed.env(prefix=prefix))
    port_file = tmp / f"port-{backend}-{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen(
        [sys.executable, "-m", "pruning_server", "--listen", "127.0.0.1:0", "--port-file", str(port_file)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, list[float]] = collections.defaultdict(list)

    def forget(artifact_id: str) -> None:
        # a new artifact each time: the same bytes again would be answered after the header
        r = redis.Redis.from_url(url)
        r.delete(*r.scan_iter(f"{prefix}:*"), "-")
        _forget(artifact_id, backend, env, seaweed, prefix)

    try:
        target = f"127.0.0.1:{_wait_port(port_file, server)}"
        served = psutil.Process(server.pid)
        with (
            Client(target, timeout=600) as client,
            Client(target, timeout=600, hash_first=False) as streaming,
            Client(target, timeout=600, verify="sha256") as hashing,
        ):
            client.wait_ready(30)
            _warm_up(client, tmp / "warm-up.npz", client_dir / "warm-up-back.npz")
            for _ in range(args.repeat):
                before = psutil.Process(server.pid).memory_info().rss
                sampler = PeakRss(server.pid)
                sampler.start()
                with timed(results, "up", served):
                    artifact = client.upload_dataset(path)
                started = time.perf_counter()
                assert client.upload_dataset(path).id == artifact.id  # held: answered after the header
                results["again"].append(time.perf_counter() - started)
                back = client_dir / "back.npz"
                with timed(results, "down", served):
                    client.download(artifact.id, back, resume=False)
                results["rss"].append(max(0, sampler.stop() - before))
                back.unlink()
                # the same download checked by the sha256 instead of the recorded CRC-32
                started = time.perf_counter()
                hashing.download(artifact.id, back, resume=False)
                results["down_sha256"].append(time.perf_counter() - started)
                # the server's side alone: the same download to a client that only counts bytes
                started = time.perf_counter()
                request = pb.DownloadArtifactRequest(artifact_id=artifact.id)
                assert sum(len(chunk.data) for chunk in client.stub.DownloadArtifact(request)) == artifact.size
                results["bare_down"].append(time.perf_counter() - started)
                back.unlink()
                results["disk"].append(disk_round(path, tmp))
                results["disk_read"].append(disk_read_round(path))
                if seaweed is not None:
                    up_s, down_s = raw_s3_round(seaweed, path, back)
                    results["raw_up"].append(up_s)
                    results["raw_down"].append(down_s)
                    back.unlink()
                forget(artifact.id)
                # the same upload hashed on the way instead of before (hash_first=False)
                started = time.perf_counter()
                assert streaming.upload_dataset(path).id == artifact.id
                results["up_streamed"].append(time.perf_counter() - started)
                forget(artifact.id)
    finally:
        server.terminate()
        server.wait()
        if seaweed is not None:
            seaweed.stop()
        r = redis.Redis.from_url(url)
        keys = list(r.scan_iter(f"{prefix}*"))
        if keys:
            r.delete(*keys)
    return results


def _warm_up(client: Client, path: pathlib.Path, back: pathlib.Path) -> None:
    """A 64 MiB upload and download before the measured rounds (on S3, a multipart upload of
    several parts), so that what a server process sets up once (the S3 client and its threads,
    the pipeline's threads and their malloc arenas, gRPC's buffers, the thread pools) does not
    count as the growth of a transfer. Without it the first 1 GiB round grows the S3 server by
    about 20 MiB more than the next ones."""
    artifact = client.upload_dataset(make_npz(path, 64))
    client.download(artifact.id, back, resume=False)
    back.unlink()


def _forget(artifact_id: str, backend: str, env: dict, seaweed, prefix: str) -> None:
    if backend == "s3":
        import obstore

        obstore.delete(seaweed.object_store(prefix=prefix), artifact_id)
    else:
        pathlib.Path(env["PRUNING_STATE_DIR"], "artifacts", artifact_id[:2], artifact_id).unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the dataset moved each way")
    parser.add_argument("--backend", default="local,s3", help="comma-separated: local, s3")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are printed")
    parser.add_argument(
        "--writes",
        default="direct",
        help="comma-separated: direct (the default: uploads on the server and downloads in the SDK written past "
        "the page cache where the file system allows it), plain (both through the page cache); each a row",
    )
    parser.add_argument(
        "--client-dir",
        default=None,
        help="where the client keeps the file it uploads and the downloads (default: a temporary "
        "directory beside the server's; /dev/shm takes the client's disk out of the figures)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, tempfile.TemporaryDirectory(dir=args.client_dir) as client_name:
        tmp, client_dir = pathlib.Path(tmp_name), pathlib.Path(client_name)
        path = make_npz(client_dir / "data.npz", args.mb)
        size = path.stat().st_size
        echo = subprocess.Popen([sys.executable, __file__, "--echo-server", str(tmp / "echo-port")])
        try:
            target = f"127.0.0.1:{_wait_port(tmp / 'echo-port', echo)}"
            rows = []
            for backend in args.backend.split(","):
                for writes in args.writes.split(","):
                    echoed: dict[str, list[float]] = collections.defaultdict(list)
                    for _ in range(args.repeat):
                        echo_round(target, path, psutil.Process(echo.pid), echoed)
                    files._O_DIRECT = direct_flag if writes == "direct" else 0  # the SDK's downloads
                    measured = bench_backend(backend, args, tmp, path, client_dir, direct=writes == "direct")
                    name = backend if args.writes == "direct" else f"{backend} ({writes} writes)"
                    rows.append((name, echoed, measured))
        finally:
            echo.kill()
            echo.wait()

    def rate(seconds: list[float]) -> float:
        return size / statistics.median(seconds) / 1e6

    where = f"client files in {args.client_dir}" if args.client_dir else "client files on the server's disk"
    print(f"{size:,} bytes each way, medians of {args.repeat}, client and server in separate processes, {where}")
    header = (
        "backend",
        "echo up",
        "up",
        "ratio",
        "up, hashed on the way",
        "ratio",
        "again (held)",
        "echo down",
        "down",
        "ratio",
        "down, sha256 checked",
        "ratio",
        "down, bytes only",
        "ratio",
        "RSS growth",
        "disk write + fsync",
        "disk read (direct)",
        "raw S3 PUT",
        "raw GET",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for backend, echoed, m in rows:
        up, down, e_up, e_down = rate(m["up"]), rate(m["down"]), rate(echoed["up"]), rate(echoed["down"])
        bare = rate(m["bare_down"])
        raw = (f"{rate(m['raw_up']):.0f} MB/s", f"{rate(m['raw_down']):.0f} MB/s") if m["raw_up"] else ("-", "-")
        cells = (
            backend,
            f"{e_up:.0f} MB/s",
            f"{up:.0f} MB/s",
            f"{up / e_up:.2f}x",
            f"{rate(m['up_streamed']):.0f} MB/s",
            f"{rate(m['up_streamed']) / e_up:.2f}x",
            f"{statistics.median(m['again']):.2f} s",
            f"{e_down:.0f} MB/s",
            f"{down:.0f} MB/s",
            f"{down / e_down:.2f}x",
            f"{rate(m['down_sha256']):.0f} MB/s",
            f"{rate(m['down_sha256']) / e_down:.2f}x",
            f"{bare:.0f} MB/s",
            f"{bare / e_down:.2f}x",
            f"{max(m['rss']) / MiB:.1f} MiB",
            f"{rate(m['disk']):.0f} MB/s",
            f"{rate(m['disk_read']):.0f} MB/s",
            *raw,
        )
        print("| " + " | ".join(cells) + " |")

    # Where both ends share the machine's cores, the ratios cannot beat what the CPU seconds
    # of the two ends allow: the service hashes each byte (sha256, 0.6 s a GiB a core, on the
    # server as it receives an upload; the SDK's check is the recorded CRC-32) and writes and
    # reads it on disk, where the echo does neither.
    gib = size / (1 << 30)
    print()
    print(f"CPU seconds per GiB, client + server (medians of {args.repeat}; {os.cpu_count()} cores):")
    header = ("backend", "echo up", "up", "echo down", "down")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))

    def cpu(results: dict[str, list[float]], name: str) -> str:
        client = statistics.median(results[f"{name}_client_cpu"]) / gib
        server = statistics.median(results[f"{name}_server_cpu"]) / gib
        return f"{client:.2f} + {server:.2f} = {client + server:.2f} s"

    for backend, echoed, m in rows:
        print(f"| {backend} | {cpu(echoed, 'up')} | {cpu(m, 'up')} | {cpu(echoed, 'down')} | {cpu(m, 'down')} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo-server":
        asyncio.run(_echo_server(sys.argv[2]))
    else:
        main()
