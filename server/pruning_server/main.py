"""Entry point of the gRPC server: ``pruning-server`` (or ``python -m pruning_server``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import grpc
import redis
import redis.asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_core import allocator
from pruning_core import telemetry as core_telemetry
from pruning_core.objectstore import first_line, open_store
from pruning_core.settings import Settings, listen_address, redacted_url, settings_problems
from pruning_core.store import AsyncJobStore
from pruning_core.sweeps import SweepStore

from . import reaper, telemetry
from .interceptors import ErrorsAndMetrics, Tracing
from .service import PruningService, make_celery
from .sweeps import SweepServicer, drive
from .watches import WatchHub

log = logging.getLogger("pruning_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PruningService"].full_name
SWEEP_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SweepService"].full_name
MAX_MESSAGE = 8 * 1024 * 1024


class ClientGone(logging.Filter):
    """grpc.aio logs an ERROR with a traceback when a message cannot be sent because the
    client cancelled the stream or went away (``ExecuteBatchError`` on a SendMessageOperation):
    anyone could fill the log with them. It becomes one INFO line; other errors pass as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if type(exc).__name__ == "ExecuteBatchError" and "SendMessageOperation" in str(exc):
            method = record.getMessage().rpartition(" ")[2].strip("[]")
            record.msg, record.args = "the client of %s went away before its stream ended", (method,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_CLIENT_GONE = ClientGone()
EXIT_ADDRESS_IN_USE = 3
EXIT_UNREACHABLE = 4


class AddressInUse(RuntimeError):
    """The server's address is taken (by another pruning server or anything else)."""


class StartFailed(RuntimeError):
    """The server cannot start: said in one line, with its exit code (2: a setting is wrong,
    EXIT_UNREACHABLE: the job store or the artifact store does not answer)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Running:
    """A started server with what it owns; ``stop()`` shuts it down gracefully."""

    def __init__(
        self, server: grpc.aio.Server, port: int, health_servicer, store: AsyncJobStore, hub: WatchHub, grace: float
    ):
        self.server, self.port, self.health, self.store, self.grace = server, port, health_servicer, store, grace
        self.hub = hub
        self.reaper: asyncio.Task | None = None
        self.health_check: asyncio.Task | None = None
        self.housekeeping: asyncio.Task | None = None
        self.sweeps: asyncio.Task | None = None
        self.metrics: telemetry.MetricsEndpoint | None = None
        self.metrics_port: int | None = None

    async def stop(self) -> None:
        tasks = [t for t in (self.reaper, self.health_check, self.housekeeping, self.sweeps) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:  # let them end (not be left pending at loop close), but never wait on one for long
            await asyncio.wait(tasks, timeout=2)
        if self.metrics is not None:
            self.metrics.shutdown()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace)
        await self.hub.stop()
        await self.store.redis.aclose()


async def watch_redis(store: AsyncJobStore, health_servicer, interval_s: float) -> None:
    """Health follows Redis: NOT_SERVING while a ping fails, SERVING again once it answers."""
    serving = True
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.wait_for(store.redis.ping(), max(1.0, interval_s))
            up = True
        except Exception as exc:  # noqa: BLE001 - any failure to answer is "unreachable"
            up = False
            if serving:
                log.warning("Redis unreachable (%s): health is NOT_SERVING", exc or type(exc).__name__)
        if up != serving:
            serving = up
            status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, status)
            if up:
                log.info("Redis reachable again: health is SERVING")


async def cluster_redis(client: redis.asyncio.Redis) -> bool:
    """Whether ``client``'s Redis is a Redis Cluster node. The job store's scripts update a job,
    its indexes and its tenant's counters in one step, keys that a cluster spreads over its
    nodes, so the service needs a standalone Redis (a primary, with replicas or not)."""
    try:
        info = await client.info("cluster")
    except redis.ResponseError:
        return False
    return str(info.get("cluster_enabled", "0")) == "1"


async def volatile_redis(client: redis.asyncio.Redis) -> str | None:
    """What makes ``client``'s Redis keep nothing on disk (no append-only file and no snapshot
    points), or None when it persists or will not say (CONFIG refused, as on some hosted Redis)."""
    try:
        config = {**await client.config_get("appendonly"), **await client.config_get("save")}  # one each: Redis 6
    except redis.ResponseError:
        return None
    if config.get("appendonly") == "no" and not (config.get("save") or "").strip():
        return "appendonly no, no save points"
    return None


async def evicting_redis(client: redis.asyncio.Redis) -> str | None:
    """What lets ``client``'s Redis drop keys it was given (a memory limit with a policy other
    than noeviction), or None when it keeps them all or will not say."""
    try:
        config = {**await client.config_get("maxmemory"), **await client.config_get("maxmemory-policy")}
    except redis.ResponseError:
        return None
    policy, limit = config.get("maxmemory-policy", "noeviction"), config.get("maxmemory", "0")
    if policy != "noeviction" and limit not in ("0", ""):
        return f"maxmemory {limit}, maxmemory-policy {policy}"
    return None


_where = redacted_url  # a Redis URL without its credentials, for logs


async def create_server(settings: Settings, address: str | None = None) -> Running:
    """Builds and starts the server on ``address`` (port 0 picks a free port)."""
    store = AsyncJobStore.from_url(
        settings.redis_url, settings.key_prefix, settings.redis_max_connections, settings.redis_pool_timeout_s
    )
    try:
        await store.redis.ping()
    except (redis.RedisError, OSError) as exc:
        raise StartFailed(
            f"cannot reach the job store at {_where(settings.redis_url)} (PRUNING_REDIS_URL): {first_line(exc)}",
            EXIT_UNREACHABLE,
        ) from exc
    if await cluster_redis(store.redis):
        raise StartFailed(
            f"the job store at {_where(settings.redis_url)} (PRUNING_REDIS_URL) is a Redis Cluster node: the service "
            "updates a job, its indexes and its counters in one script, which a cluster cannot run across its "
            "nodes; give it a standalone Redis (a primary, with replicas or not)",
            2,
        )
    if volatile := await volatile_redis(store.redis):
        log.warning(
            "the job store at %s keeps nothing on disk (%s): a restart of that Redis loses every job, "
            "artifact record and queued task; turn on its append-only file (appendonly yes)",
            _where(settings.redis_url),
            volatile,
        )
    if evicting := await evicting_redis(store.redis):
        log.warning(
            "the job store at %s may evict keys when full (%s): an evicted job is gone, and an evicted artifact "
            "record lets the housekeeping delete bytes a user still holds; set maxmemory-policy noeviction "
            "(a full Redis then refuses writes, answered UNAVAILABLE)",
            _where(settings.redis_url),
            evicting,
        )
    # Jobs recorded before the state and label indexes: in them before a filtered list runs.
    if backfilled := await store.backfill_indexes():
        log.info("indexed %d jobs recorded before the state and label indexes", backfilled)
    if backfilled := await store.backfill_artifact_index():
        log.info("indexed %d artifact records written before the time indexes", backfilled)
    if pinned := await store.backfill_pins():
        log.info("pinned the inputs of %d jobs and sweeps recorded before jobs pinned what they read", pinned)
    if persisted := await store.persist_idempotency_keys():
        log.info("%d idempotency keys written to expire after 7 days now last as long as their job or sweep", persisted)
    reader = AsyncJobStore.single_connection(settings.redis_url, settings.key_prefix, settings.watch_block_s + 30)
    hub = WatchHub(store, reader, int(settings.watch_block_s * 1000), settings.watch_buffer)
    try:
        blobs = open_store(settings)
    except ValueError as exc:
        raise StartFailed(f"invalid settings: {exc}", 2) from exc
    try:
        await asyncio.to_thread(reaper.sweep, blobs, settings)
    except Exception as exc:
        raise StartFailed(
            f"cannot use the artifact store ({settings.artifact_store}): {first_line(exc)}", EXIT_UNREACHABLE
        ) from exc
    interceptors: list[grpc.aio.ServerInterceptor] = [
        ErrorsAndMetrics(settings.max_error_bytes, settings.max_violations)
    ]
    if settings.tracing:
        telemetry.setup_tracing(settings)
        interceptors.insert(0, Tracing())  # outermost: the span sees the status the errors map to
    logging.getLogger("grpc._cython.cygrpc").addFilter(_CLIENT_GONE)  # once however many servers
    idle = (
        [("grpc.max_connection_idle_ms", int(settings.connection_idle_s * 1000))] if settings.connection_idle_s else []
    )
    server = grpc.aio.server(
        interceptors=interceptors,
        # Bounds on what clients open: calls in all, calls per connection, idle connections.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            *idle,
            ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # A second server on a taken port must fail, not share it and split the requests.
            ("grpc.so_reuseport", 0),
            # Without BDP probing a stream's window stays fixed: a slow upload buffers little.
            ("grpc.http2.bdp_probe", int(settings.http2_bdp_probe)),
            # A client that vanished without closing its connection (no FIN, no RST) would hold
            # its watches' and transfers' slots forever: pings find it gone. Sent also while a
            # stream is silent (an idle watch), however long.
            ("grpc.keepalive_time_ms", int(settings.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
            ("grpc.http2.ping_timeout_ms", int(settings.keepalive_timeout_s * 1000)),  # else 60 s
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    celery = make_celery(settings)
    celery.conf.task_send_sent_event = True  # Flower sees a job's task from the moment it is queued
    jobs = PruningService(settings, store, blobs, celery, hub)
    pb_grpc.add_PruningServiceServicer_to_server(jobs, server)
    sweep_store = SweepStore(store.redis, settings.key_prefix)
    pb_grpc.add_SweepServiceServicer_to_server(SweepServicer(jobs, sweep_store), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, SWEEP_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = address or settings.listen
    refused, metrics = None, None
    try:
        if settings.tls_cert_file and settings.tls_key_file:
            key, cert = settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes()
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:
        why = "the address is in use (or not available here)"
        if settings.tls_cert_file:
            why += ", or the TLS certificate and key are not a valid PEM pair"
        refused = f"cannot listen on {address}: {why}"
    if refused is None and settings.metrics_listen:
        try:
            metrics = telemetry.MetricsEndpoint(settings)
        except OSError as exc:
            refused = f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror or exc}"
    if refused is not None:
        await store.redis.aclose()
        await reader.redis.aclose()
        raise AddressInUse(refused)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    where = (
        f"S3 bucket {settings.s3_bucket}, prefix {settings.s3_prefix!r}"
        if settings.artifact_store == "s3"
        else blobs.root
    )
    # gRPC answers 1 for a Unix socket: the socket is the address
    log.info("pruning server listening on %s (artifacts in %s)", _bound(address, port), where)
    if keys := settings.tenants_by_key():
        log.info("authentication on: %d API keys of %d tenants", len(keys), len(set(keys.values())))
    else:
        # every caller is one tenant ("default"), whatever key it sends: say so once
        log.warning("authentication off (PRUNING_API_KEYS is empty): every call is taken as tenant 'default'")
    hub.start()
    try:
        await store.born()  # before the first upload: see reaper.enforce_retention
    except Exception:  # Redis down at start: the housekeeping records it later
        log.warning("could not record the job store's birth", exc_info=True)
    running = Running(server, port, health_servicer, store, hub, settings.grace_s)
    running.health_check = asyncio.create_task(watch_redis(store, health_servicer, settings.health_check_interval_s))
    if metrics is not None:
        running.metrics, running.metrics_port = metrics, metrics.port
    running.housekeeping = asyncio.create_task(reaper.housekeeping(store, blobs, settings))
    running.sweeps = asyncio.create_task(drive(jobs, sweep_store, settings.sweep_interval_s))
    # Always: it also sends the task of a job whose CreateJob died before sending it.
    running.reaper = asyncio.create_task(reaper.run(store, celery, settings))
    return running


async def serve(settings: Settings, address: str | None = None, ready=None) -> None:
    if settings.keep_freed_buffers:
        allocator.keep_freed_buffers()
    running = await create_server(settings, address)
    if ready is not None:
        ready(running.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await running.stop()


def _listen(value: str) -> str:
    try:
        return listen_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bound(address: str, port: int) -> str:
    """Where a server listens, as said to people: ``port N``, or a Unix socket's address."""
    return address if address.startswith("unix") else f"port {port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the pruning gRPC server.")
    parser.add_argument(
        "--listen",
        type=_listen,
        help="host:port, or a bare port on 127.0.0.1 (default: PRUNING_LISTEN or 127.0.0.1:50051)",
    )
    parser.add_argument("--port-file", help="write the bound port to this file once serving")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"pruning server: invalid settings: {settings_problems(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    core_telemetry.configure_logging(settings.log_format, settings.log_level)

    def ready(port: int) -> None:
        listen = args.listen or settings.listen
        print(f"pruning server ready on {_bound(listen, port)}", flush=True)
        if args.port_file:  # the port, or a Unix socket's address
            with open(args.port_file, "w") as f:
                f.write(listen if listen.startswith("unix") else str(port))

    try:
        asyncio.run(serve(settings, args.listen, ready))
    except AddressInUse as exc:
        print(f"pruning server: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_ADDRESS_IN_USE) from None
    except StartFailed as exc:
        print(f"pruning server: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
