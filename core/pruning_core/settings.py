"""Settings shared by the server, the workers and the embedded launcher.

Every setting comes from an environment variable with the ``PRUNING_`` prefix, for example
``PRUNING_REDIS_URL=redis://redis:6379/0``. Defaults work on a laptop.
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024
S3_MAX_PARTS = 10_000  # parts of one multipart upload


def _tenants_by_key(api_keys: str) -> dict[str, str]:
    """``key=tenant,key2=tenant2`` as a map; a malformed entry, an empty key or tenant (what a
    template leaves of an unset variable, which would let callers without a key in) or a key
    given twice is refused."""
    out: dict[str, str] = {}
    for i, item in enumerate(item for item in api_keys.split(",") if item.strip()):
        key, equals, tenant = (part.strip() for part in item.partition("="))
        if not equals or not key or not tenant:
            raise ValueError(f"api_keys entry {i + 1} must be key=tenant with neither empty")
        if key in out:
            raise ValueError(f"api_keys entry {i + 1} repeats a key")
        if ":" in tenant or not tenant.isprintable() or any(c.isspace() for c in tenant) or len(tenant) > 256:
            # Tenants name Redis keys (``<prefix>:idem:<tenant>:<key>``): a ':' in one would
            # let tenant "a:b" and tenant "a" meet in the same key.
            raise ValueError(
                f"api_keys entry {i + 1}: a tenant has no ':', space or control character (at most 256 characters)"
            )
        out[key] = tenant
    return out


def redacted_url(url: str) -> str:
    """A URL without its credentials (a Redis URL's password), for logs and markers; a
    ``db`` in its query stays (it picks another database)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    db = urllib.parse.parse_qs(parts.query).get("db")  # a database chosen as ?db=N (a unix socket's way)
    query = urllib.parse.urlencode({"db": db[0]}) if db else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def listen_address(value: str) -> str:
    """``host:port`` (``[v6]:port``) or a gRPC ``unix:`` address as given, ``:port`` as
    ``[::]:port`` (every interface: gRPC takes no empty host), or a bare port as
    ``127.0.0.1:port``; raises ValueError for anything else (a URL, a missing or malformed port)."""
    text = value.strip()
    if text.startswith(("unix:", "unix-abstract:")) and len(text) > text.index(":") + 1:
        return text
    if text.isascii() and text.isdigit():
        text = f"127.0.0.1:{text}"
    _, colon, port = text.rpartition(":")
    if not (colon and "/" not in text and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ValueError(f"must be host:port (such as 127.0.0.1:50051, [::]:50051, or a bare port), got {value!r}")
    return f"[::]{text}" if text.startswith(":") else text


class Settings(BaseSettings):
    """Configuration of one deployment (server, workers and launcher read the same)."""

    model_config = SettingsConfigDict(env_prefix="PRUNING_", extra="ignore")

    listen: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds")
    metrics_listen: str = Field("", description="host:port of the Prometheus /metrics endpoint; empty = off")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for job records, events and the Celery broker; "
        "`pruning up` starts an embedded Redis when this variable is unset",
    )
    key_prefix: str = Field("pruning", description="prefix of every Redis key the service writes")
    state_dir: pathlib.Path = Field(pathlib.Path(".pruning"), description="local state (artifacts, embedded Redis)")
    artifact_dir: pathlib.Path | None = Field(None, description="artifact store; default <state_dir>/artifacts")
    data_dir: pathlib.Path | None = Field(None, description="built-in datasets; default <state_dir>/data")
    queue: str = Field("pruning", description="Celery queue the jobs go to")
    max_upload_bytes: int = Field(1024 * MiB, description="largest accepted upload")
    max_decompressed_bytes: int = Field(4096 * MiB, description="largest decompressed content of an archive")
    max_config_bytes: int = Field(
        64 * MiB, description="largest model configuration (config.json, model_config) parsed at upload"
    )
    chunk_size: int = Field(1 * MiB, description="download chunk size")
    redis_max_connections: int = Field(100, ge=1, description="connections in the server's Redis pool")
    redis_pool_timeout_s: float = Field(
        5.0, description="how long a request waits for a free pooled Redis connection (then UNAVAILABLE)"
    )
    max_watches: int = Field(4096, ge=1, description="concurrent WatchJob and WatchSweep streams per server process")
    max_watches_per_tenant: int = Field(
        256, ge=1, description="concurrent WatchJob and WatchSweep streams of one tenant per server process"
    )
    max_uploads: int = Field(256, ge=1, description="concurrent uploads per server process")
    max_uploads_per_tenant: int = Field(16, ge=1, description="concurrent uploads of one tenant per server process")
    max_downloads: int = Field(256, ge=1, description="concurrent downloads per server process")
    max_downloads_per_tenant: int = Field(
        16, ge=1, description="concurrent downloads of one tenant per server process (each holds its read-ahead chunks)"
    )
    max_stored_bytes_per_tenant: int = Field(
        50 * 1024 * MiB,
        ge=0,
        description="bytes of the artifacts one tenant holds records of (uploads and exports, each record "
        "counting its bytes); an upload past it gets RESOURCE_EXHAUSTED; 0 = no limit",
    )
    max_active_jobs_per_tenant: int = Field(
        1000,
        ge=0,
        description="jobs of one tenant queued, running or being cancelled at once; CreateJob and CreateSweep past it get "
        "RESOURCE_EXHAUSTED (a sweep's own trials are not refused); 0 = no limit",
    )
    upload_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="an upload that sends no byte for this long (empty messages are no progress) is dropped "
        "(DEADLINE_EXCEEDED)",
    )
    download_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a download whose client takes no chunk for this long is ended (DEADLINE_EXCEEDED; the SDK "
        "resumes from its offset), freeing its slot: a client that stops reading holds none for good. A slow "
        "client is not ended: gRPC takes each chunk as the link frees the stream's window (a client at 64 KiB/s "
        "finishes with 256 KiB chunks and a 0.5 s timeout)",
    )
    work_dir: pathlib.Path | None = Field(
        None, description="where workers keep a job's files while it runs; default <system temp>/pruning-jobs"
    )
    sweep_min_age_s: float = Field(
        60.0,
        description="upload temp files and job directories no live process holds are removed at start and by "
        "the housekeeping once at least this old",
    )
    housekeeping_interval_s: float = Field(
        300.0, gt=0, description="how often a server sweeps orphaned temp files and enforces retention"
    )
    job_retention_s: float = Field(
        30 * 86400.0,
        ge=0,
        description="an ended job's record and events are deleted this long after it ended; 0 = kept",
    )
    artifact_retention_s: float = Field(
        30 * 86400.0,
        ge=0,
        description="a tenant's artifact record is deleted this long after it was created (the bytes once no "
        "record points to them); 0 = kept",
    )
    set_aside_retention_s: float = Field(
        30 * 86400.0,
        ge=0,
        description="bytes found changed behind the service's back and set aside into the store's quarantine/ "
        "are deleted this long after; 0 = kept until an operator removes them",
    )
    retry_after_s: float = Field(
        5.0, ge=0, description="the retry hint (google.rpc.RetryInfo) of a RESOURCE_EXHAUSTED answer"
    )
    watch_block_s: float = Field(5.0, gt=0, description="longest single blocking read of the shared watch reader")
    watch_buffer: int = Field(
        1000, description="events buffered per watch stream before it reads the job's stream itself"
    )
    watch_recheck_s: float = Field(
        30.0, gt=0, description="an idle watch stream checks its job's state this often (ends it if the job ended)"
    )
    max_error_bytes: int = Field(
        200,
        ge=32,
        description="echoed text in an error answer (message, each field) is cut to this, a description to twice this",
    )
    max_violations: int = Field(10, ge=1, description="field violations kept in one INVALID_ARGUMENT answer")
    health_check_interval_s: float = Field(
        2.0, gt=0, description="how often the server pings Redis; health is NOT_SERVING while it cannot"
    )
    api_keys: str = Field("", description="'key=tenant,key2=tenant2'; empty disables authentication")
    tls_cert_file: pathlib.Path | None = Field(
        None, description="the server's certificate chain (PEM); with tls_key_file, the server serves TLS only"
    )
    tls_key_file: pathlib.Path | None = Field(None, description="the private key of tls_cert_file (PEM)")
    event_interval_s: float = Field(0.5, ge=0, description="least time between two progress events of a job")
    grace_s: float = Field(5.0, ge=0, description="graceful shutdown period of the server")
    job_time_limit_s: float = Field(
        0.0,
        ge=0,
        description="an attempt of a job running longer fails it with DEADLINE_EXCEEDED (an attempt resumed "
        "after its worker was lost has the limit anew); 0 = no limit",
    )
    heartbeat_interval_s: float = Field(10.0, gt=0, description="how often a worker marks its running job alive")
    sweep_interval_s: float = Field(
        1.0, gt=0, description="how often a server checks the trials of running sweeps and queues the next ones"
    )
    reap_after_s: float = Field(
        120.0, ge=0, description="a running job silent this long is re-queued (its worker is presumed dead); 0 = never"
    )
    worker_drain_s: float = Field(
        0.0,
        ge=0,
        description="a worker told to shut down (SIGTERM, Ctrl-C) lets its running job go on this long, then "
        "stops it at its next step and re-queues it at once, to resume from its last epoch checkpoint on the next "
        "worker; keep it under the grace period before the worker is killed (0 = stop at once)",
    )
    worker_redis_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a worker's Redis calls give up after this long; the attempt then stops (not failing the "
        "job) and re-queues it once the store answers, to resume from its last checkpoint",
    )
    max_attempts: int = Field(
        3,
        ge=0,
        description="times a job's worker may be lost: at the last the job fails (ABORTED) instead of being "
        "re-queued again; 0 = no limit",
    )
    artifact_store_patience_s: float = Field(
        900.0,
        ge=0,
        description="a job whose attempts the artifact store stops (down, stalled, refusing the credentials) goes "
        "back to the queue, again and again with a backoff, until this long after the first stop of the outage (an "
        "attempt that finds the store answering ends it), or once the store answered and then stopped three "
        "attempts; then it fails (UNAVAILABLE). An "
        "attempt after a stop asks the store first, and stops at once while it does not answer",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON object per log line, with the job id, attempt and Celery task id bound"
    )
    log_level: str = Field("INFO", description="level of the server's and the workers' logs")
    worker_metrics_listen: str = Field(
        "", description="host:port of a worker's own Prometheus /metrics endpoint (port 0 picks one); empty = off"
    )
    tracing: bool = Field(
        False, description="OpenTelemetry tracing of RPCs and jobs; exporters from OTEL_TRACES_EXPORTER (default otlp)"
    )
    trace_file: pathlib.Path | None = Field(None, description="also write finished spans to this file as JSON lines")
    mlflow_tracking_uri: str = Field("", description="log every succeeded job to this MLflow tracking URI; empty = off")
    mlflow_experiment: str = Field("pruning", description="MLflow experiment the job runs go to")
    artifact_store: Literal["local", "s3"] = Field(
        "local",
        description="where artifacts live: 'local' (artifact_dir, one host) or 's3' (an S3-compatible object "
        "store; servers and workers then share no disk)",
    )
    s3_endpoint: str = Field("", description="S3 endpoint URL (http:// allowed); empty = AWS S3 for s3_region")
    s3_bucket: str = Field("", description="bucket of the artifacts (DNS-style name; it must exist)")
    s3_prefix: str = Field("pruning", description="key prefix of every artifact object in the bucket")
    s3_region: str = Field("us-east-1", description="region the requests are signed for")
    s3_access_key_id: str = Field("", description="S3 access key; empty = AWS_* variables or instance credentials")
    s3_secret_access_key: SecretStr = Field(SecretStr(""), description="S3 secret key")
    s3_part_size: int = Field(
        5 * MiB,
        description="multipart upload part size (S3 needs at least 5 MiB, and allows 10,000 parts, so it must "
        "cover max_upload_bytes / 10,000); an upload holds up to part size x (s3_max_concurrency + 1) in memory",
    )
    s3_max_concurrency: int = Field(2, ge=1, description="parts of one transfer in flight at once")
    s3_timeout_s: float = Field(
        30.0,
        gt=0,
        description="an S3 request that connects, or reads a byte, no sooner than this (a store paused or cut "
        "off) is sent again, up to s3_max_retries times; then the call is UNAVAILABLE. A stream read as slowly "
        "as its reader takes it (a download to a slow client) is not bound by it",
    )
    s3_max_retries: int = Field(2, ge=0, description="times a failed or timed-out S3 request is sent again")
    s3_abort_uploads_after_s: float = Field(
        86400.0,
        gt=0,
        description="the housekeeping aborts the multipart uploads under s3_prefix started longer ago than this "
        "(by the S3 server's clock), and so frees their parts: a dropped upload whose abort the store did not "
        "answer, or a killed server's. Keep it above the longest upload",
    )
    download_readahead: int = Field(4, ge=1, description="chunks a download reads ahead of what gRPC has sent")
    download_readahead_total: int = Field(
        32,
        ge=0,
        description="chunks all downloads of a server process read ahead together beyond one each: many "
        "downloads whose clients stopped reading held download_readahead chunks each until their idle timeout",
    )
    http2_bdp_probe: bool = Field(
        False,
        description="let gRPC grow each stream's HTTP/2 window by its bandwidth-delay estimate; off keeps "
        "what a slow upload buffers in the server small (tens of MiB otherwise) and is as fast on fast links; "
        "turn on for clients far away (high latency)",
    )
    max_concurrent_rpcs: int = Field(
        8192,
        gt=0,
        description="calls a server process serves at once, of every kind; gRPC refuses more (RESOURCE_EXHAUSTED)",
    )
    max_streams_per_connection: int = Field(
        1024, gt=0, description="calls one client connection may have open at once (HTTP/2 streams); more wait"
    )
    connection_idle_s: float = Field(
        900.0, ge=0, description="a client connection with no call this long is closed (clients reconnect); 0 = kept"
    )
    keepalive_s: float = Field(
        60.0,
        gt=0,
        description="the server pings every client connection this often; one whose client vanished "
        "(a host powered off, a dropped network) is closed after keepalive_timeout_s, freeing its streams' slots",
    )
    keepalive_timeout_s: float = Field(20.0, gt=0, description="how long a keepalive ping may go unanswered")
    upload_pipeline_depth: int = Field(
        8, ge=1, description="chunks of one upload received but not yet hashed and written (memory per upload)"
    )
    upload_pipeline_max_bytes: int = Field(
        8 * MiB,
        gt=0,
        description="bytes of one upload received but not yet hashed and written, at most (a chunk larger than "
        "this goes alone): a client's larger chunks do not multiply the memory an upload holds",
    )
    keep_freed_buffers: bool = Field(
        True,
        description="the server's allocator keeps freed transfer chunks for reuse instead of returning them to the "
        "kernel and faulting them in again (glibc only; halves a download's server CPU)",
    )
    direct_writes: bool = Field(
        True,
        description="uploads are written to disk past the page cache (O_DIRECT) where the file system allows it, "
        "and downloads read what the page cache does not hold past it: writing or reading a cold GiB costs the "
        "server 0.1-0.2 s of CPU instead of 0.3-3 s on a VM whose host reclaims freed memory; off where direct "
        "I/O is slow",
    )
    dataset_cache_bytes: int = Field(
        2048 * MiB,
        ge=0,
        description="datasets a worker process keeps loaded (read-only) for the next job on the same data; 0 = none",
    )
    cache_dir: pathlib.Path | None = Field(
        None, description="a worker's content-addressed cache of fetched inputs; default <state_dir>/cache"
    )
    cache_max_bytes: int = Field(
        10 * 1024 * MiB, ge=0, description="size bound of a worker's input cache (least recently used files go first)"
    )

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        return listen_address(value)

    @field_validator("s3_endpoint")
    @classmethod
    def _s3_endpoint(cls, value: str) -> str:
        """A URL with its scheme and host: obstore takes ``minio:9000`` (no scheme) and then
        panics on the first request, killing a worker's process mid-job."""
        import urllib.parse

        if not value:
            return value
        try:
            url = urllib.parse.urlsplit(value)
            url.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"must be a URL starting with http:// or https://, as in http://minio:9000 (got {value!r})"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        """A URL redis-py takes, whose database part is a number: redis-py reads
        ``redis://host:6379/abc`` as database 0, another deployment's perhaps."""
        import urllib.parse

        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must start with redis://, rediss:// or unix:// (got {redacted_url(value)!r})")
        url = urllib.parse.urlsplit(value)
        path = url.path.strip("/") if not value.startswith("unix://") else ""
        db = urllib.parse.parse_qs(url.query).get("db", [])
        if (path and not (path.isascii() and path.isdigit())) or any(not (d.isascii() and d.isdigit()) for d in db):
            raise ValueError(f"the database must be a number, as in redis://host:6379/0 (got {redacted_url(value)!r})")
        return value

    @field_validator("queue", "key_prefix")
    @classmethod
    def _named(cls, value: str) -> str:
        """Not empty, as a template leaves an unset variable: jobs went to a queue no worker
        reads, and stayed QUEUED without a word."""
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("metrics_listen", "worker_metrics_listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        _, colon, port = value.rpartition(":")
        if value and not (colon and port.isascii() and port.isdigit() and int(port) <= 65535):
            raise ValueError(f"must be host:port (or empty for none), got {value!r}")
        return value

    @field_validator("chunk_size")
    @classmethod
    def _chunk_size_positive(cls, value: int) -> int:
        if not 1024 <= value <= 4 * MiB:
            raise ValueError(f"chunk_size must be in [1024, 4 MiB], got {value}")
        return value

    @property
    def artifacts_path(self) -> pathlib.Path:
        return self.artifact_dir or self.state_dir / "artifacts"

    @property
    def checkpoints_path(self) -> pathlib.Path:
        """Where the local artifact store keeps jobs' epoch checkpoints (<artifacts>/checkpoints/<job id>,
        shared by the server and the workers); the S3 store keeps them in each job's work directory."""
        return self.artifacts_path / "checkpoints"

    @field_validator("s3_part_size")
    @classmethod
    def _part_size_in_s3_range(cls, value: int) -> int:
        if not 5 * MiB <= value <= 5 * 1024 * MiB:
            raise ValueError(f"s3_part_size must be in [5 MiB, 5 GiB], got {value}")
        return value

    @field_validator("api_keys")
    @classmethod
    def _api_keys_parse(cls, value: str) -> str:
        _tenants_by_key(value)
        return value

    @model_validator(mode="after")
    def _tls_needs_both_files(self) -> Settings:
        given = {"tls_cert_file": self.tls_cert_file, "tls_key_file": self.tls_key_file}
        if any(given.values()) and not all(given.values()):
            missing = next(name for name, path in given.items() if not path)
            raise ValueError(
                f"TLS needs both tls_cert_file and tls_key_file; {missing} is not set (the server would serve plaintext)"
            )
        for name, path in given.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {str(path)!r} is not a file")
        return self

    @model_validator(mode="after")
    def _parts_cover_the_largest_upload(self) -> Settings:
        if self.artifact_store == "s3" and self.max_upload_bytes > S3_MAX_PARTS * self.s3_part_size:
            raise ValueError(
                f"max_upload_bytes {self.max_upload_bytes} needs more than S3's {S3_MAX_PARTS} parts of "
                f"s3_part_size {self.s3_part_size}: raise s3_part_size to at least "
                f"{-(-self.max_upload_bytes // S3_MAX_PARTS)}"
            )
        return self

    @property
    def cache_path(self) -> pathlib.Path:
        return self.cache_dir or self.state_dir / "cache"

    @property
    def work_path(self) -> pathlib.Path:
        return self.work_dir or pathlib.Path(tempfile.gettempdir()) / "pruning-jobs"

    @property
    def data_path(self) -> pathlib.Path:
        return self.data_dir or self.state_dir / "data"

    def tenants_by_key(self) -> dict[str, str]:
        """Maps API keys to tenants; empty when authentication is off."""
        return _tenants_by_key(self.api_keys)

    def celery_broker_url(self) -> str:
        """The Redis URL in the form kombu expects (unix sockets use redis+socket://)."""
        if self.redis_url.startswith("unix://"):
            return "redis+socket://" + self.redis_url[len("unix://") :]
        return self.redis_url


def settings_problems(error: ValidationError) -> str:
    """A settings error as a line for the operator: each problem under the variable it came
    from (``PRUNING_CHUNK_SIZE: ...``), one between settings under none."""
    problems = []
    for e in error.errors():
        message = str(e["msg"]).removeprefix("Value error, ")
        where = "_".join(map(str, e["loc"])).upper()
        problems.append(f"PRUNING_{where}: {message}" if where else message)
    return "; ".join(problems)
