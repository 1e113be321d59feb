"""A taken port is refused: no second server shares it (SO_REUSEPORT is off), and
`pruning up` on it exits non-zero saying why."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from redis_servers import free_ports, throwaway_redis

from conftest import ServerThread, settings_for

pytestmark = pytest.mark.integration
PRUNING = pathlib.Path(sys.executable).parent / "pruning"


def test_second_server_on_a_taken_port_fails(env):
    from pruning_server.main import AddressInUse

    first = ServerThread(settings_for(env))
    try:
        with pytest.raises(AddressInUse):
            ServerThread(settings_for(env), f"127.0.0.1:{first.port}")
    finally:
        first.stop()


def test_pruning_up_on_a_taken_port_exits_non_zero(env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        up_env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNING_")}
        up_env.update(
            PRUNING_REDIS_URL=env["PRUNING_REDIS_URL"],  # no embedded Redis to start
            PRUNING_KEY_PREFIX=env["PRUNING_KEY_PREFIX"],
            PRUNING_QUEUE=env["PRUNING_QUEUE"] + "-port",
            PRUNING_STATE_DIR=str(tmp_path / "state"),
        )
        done = subprocess.run(
            [str(PRUNING), "up", "--listen", address], env=up_env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 3, done.stderr[-2000:]  # as the server's own exit for a taken port
    assert address in done.stderr and "Traceback" not in done.stderr
    assert "TensorFlow" not in done.stderr and "worker" not in done.stderr.lower()  # refused before it started any


def _server_process(env: dict, **settings: str) -> subprocess.CompletedProcess:
    server_env = {**os.environ, **env, **settings}
    return subprocess.run(
        [sys.executable, "-m", "pruning_server.main", "--listen", "127.0.0.1:0"],
        env=server_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_taken_metrics_port_stops_the_server_saying_why(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = _server_process(env, PRUNING_METRICS_LISTEN=address)
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"cannot serve metrics on {address}" in done.stderr and "Traceback" not in done.stderr
    assert "ready on port" not in done.stdout


@pytest.mark.parametrize("value", ["notaport", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_malformed_metrics_address_is_a_settings_error(env, value):
    done = _server_process(env, PRUNING_METRICS_LISTEN=value)
    assert done.returncode == 2
    assert "invalid settings: PRUNING_METRICS_LISTEN" in done.stderr and "Traceback" not in done.stderr


def test_a_problem_between_settings_is_said_without_a_variable_name(env, tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    done = _server_process(env, PRUNING_TLS_CERT_FILE=str(cert))
    assert done.returncode == 2
    assert "invalid settings: TLS needs both tls_cert_file and tls_key_file" in done.stderr, done.stderr[-2000:]
    assert "PRUNING_:" not in done.stderr and "Value error" not in done.stderr and "Traceback" not in done.stderr


def test_pruning_up_says_a_settings_problem_without_a_traceback(env, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "from pruning_server.embedded import main; raise SystemExit(main())"],
        env={**os.environ, **env, "PRUNING_CHUNK_SIZE": "-1", "PRUNING_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: invalid settings: PRUNING_CHUNK_SIZE" in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_job_store_is_one_line_and_exit_4(env):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # closed once the block ends: nothing listens there
    done = _server_process(env, PRUNING_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 4, done.stderr[-2000:]
    assert f"cannot reach the job store at redis://127.0.0.1:{port}/0 (PRUNING_REDIS_URL)" in done.stderr
    assert "Traceback" not in done.stderr


@contextlib.contextmanager
def _cluster_node(directory: pathlib.Path) -> Iterator[str]:
    """A Redis Cluster node (alone, no slots), for as long as the block runs; its URL."""
    port, bus = free_ports(2)  # the bus named: its default (port + 10000) may lie past 65535
    options = ["--cluster-enabled", "yes", "--cluster-port", str(bus), "--save", "", "--appendonly", "no"]
    options += ["--cluster-config-file", str(directory / "nodes.conf")]
    with throwaway_redis(directory, *options, port=port, executable="redis-server") as url:
        yield url


def test_a_redis_cluster_node_is_refused_in_one_line(env, tmp_path):
    with _cluster_node(tmp_path) as url:
        done = _server_process(env, PRUNING_REDIS_URL=url)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"the job store at {url} (PRUNING_REDIS_URL) is a Redis Cluster node" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_s3_store_without_a_bucket_is_a_settings_error(env):
    done = _server_process(env, PRUNING_ARTIFACT_STORE="s3", PRUNING_S3_BUCKET="")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "invalid settings: artifact_store 's3' needs s3_bucket" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:notaport", "http://127.0.0.1:50051", "localhost"])
def test_pruning_up_refuses_a_malformed_listen_address_before_starting_anything(env, tmp_path, listen):
    done = subprocess.run(
        [str(PRUNING), "up", "--listen", listen],
        env={**os.environ, **env, "PRUNING_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "must be host:port" in done.stderr and "address is in use" not in done.stderr
    assert not (tmp_path / "redis").exists() and "Traceback" not in done.stderr  # nothing was started


def test_pruning_up_exits_4_when_its_job_store_does_not_answer(env, tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = subprocess.run(
        [str(PRUNING), "up", "--listen", "127.0.0.1:0"],
        env={
            **os.environ,
            **env,
            "PRUNING_STATE_DIR": str(tmp_path),
            "PRUNING_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 4, done.stderr[-2000:]
    assert f"cannot reach the job store at redis://127.0.0.1:{port}/0" in done.stderr + done.stdout
    assert "celery" not in (done.stderr + done.stdout).lower()  # checked before a worker started


def test_pruning_up_with_a_log_file_shows_the_failing_servers_last_lines(env, tmp_path):
    log = tmp_path / "logs" / "up.log"
    log.parent.mkdir()
    log.write_text("an earlier run's last line\n")  # appended to: never shown as this run's
    with _cluster_node(tmp_path) as url:  # it answers a ping: the server starts, and refuses it
        done = subprocess.run(
            [str(PRUNING), "up", "--listen", "127.0.0.1:0", "--log-file", str(log)],
            env={
                **os.environ,
                **env,
                "PRUNING_STATE_DIR": str(tmp_path / "state"),
                "PRUNING_REDIS_URL": url,
            },
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 2, done.stderr[-2000:]
    reason = f"the job store at {url} (PRUNING_REDIS_URL) is a Redis Cluster node"
    assert reason in log.read_text()  # the server's own words went to the file,
    assert f"the last lines of {log}:" in done.stderr and reason in done.stderr  # and reach the terminal
    assert "an earlier run's last line" not in done.stderr


def test_pruning_up_refuses_a_log_file_it_cannot_write_before_starting_anything(env, tmp_path):
    (tmp_path / "a-file").write_text("")
    done = subprocess.run(
        [str(PRUNING), "up", "--listen", "127.0.0.1:0", "--log-file", str(tmp_path / "a-file" / "up.log")],
        env={**os.environ, **env, "PRUNING_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cannot write the log file {tmp_path / 'a-file' / 'up.log'}" in done.stderr
    assert not (tmp_path / "state").exists() and "Traceback" not in done.stderr  # nothing was started


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("PRUNING_REDIS_URL", "redis://u:hunter2@127.0.0.1:6379/abc", "the database must be a number"),
        ("PRUNING_REDIS_URL", "localhost:6379", "must start with redis://, rediss:// or unix://"),
        ("PRUNING_QUEUE", "", "must not be empty"),
        ("PRUNING_KEY_PREFIX", " ", "must not be empty"),
    ],
)
def test_a_redis_url_queue_or_prefix_a_template_got_wrong_is_a_settings_error(env, variable, value, said):
    """redis-py reads redis://host/abc as database 0 (another deployment's keys, which the
    housekeeping would take for its own); a URL without a scheme was a traceback; an empty
    queue took jobs that no worker ever read."""
    done = _server_process(env, **{variable: value})
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"invalid settings: {variable}: {said}" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_a_server_on_a_unix_socket_says_the_socket_not_port_1(env, tmp_path):
    """gRPC answers 1 for a Unix socket: the server said "ready on port 1", and `pruning up`
    "up on 127.0.0.1:1", where nothing listens."""
    from pruning_client import Client

    socket_path, port_file = tmp_path / "grpc.sock", tmp_path / "port"
    server = subprocess.Popen(
        [sys.executable, "-m", "pruning_server.main", "--listen", f"unix:{socket_path}", "--port-file", str(port_file)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        assert port_file.read_text() == f"unix:{socket_path}"
        with Client(port_file.read_text()) as client:  # the address written is one a client dials
            assert list(client.list_jobs(page_size=1)) is not None  # a call made over the socket
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    assert f"pruning server ready on unix:{socket_path}" in out and "port 1" not in out
