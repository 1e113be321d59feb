"""ListJobs latency with a state or label filter at 10,000 jobs, read through the indexes;
ListArtifacts at 10,000 artifact records, read through the tenant's time indexes.

In one run, with client and server in separate processes:

* a real ``pruning_server`` process, against the Redis in $PRUNING_REDIS_URL (default
  redis://127.0.0.1:6379/9) under a throwaway key prefix, removed at the end;
* this process writes ``--jobs`` jobs of the server's one tenant through the store's own
  create and update path (the Lua scripts that keep the indexes): 1 in 40 left QUEUED and 1
  in 40 RUNNING, spread evenly over creation time, the rest SUCCEEDED (3 in 4) or FAILED;
  1 in 20 labelled ``team=infra``, the others ``team=research``;
* for each query, ``--repeat`` ListJobs calls for the first page (page_size 50) over one gRPC
  channel, timed at the client: no filter, states=[RUNNING], states=[QUEUED, RUNNING],
  labels={team: infra};
* beside each, ``--old-repeat`` runs of the walk ListJobs made before the indexes (every job
  of the tenant newest first, one HGETALL at a time, the predicate on each), timed in this
  process against the same Redis, without gRPC (so a little below what the RPC took);
* the time the server's start-up backfill takes to index the same jobs again;
* ``--artifacts`` records of the same tenant written through the store (a quarter of each
  kind, each with a model summary of 2 KB as an uploaded model's record holds), then
  ``--repeat`` ListArtifacts calls for the first page of every kind, of models only, and for
  the 20th page of every kind (its token from the 19th), beside the walk ListArtifacts made
  before the time indexes (every record of the tenant read, then sorted), in-process.

Prints p50/p99 ms per query and whether p99 meets the bar (<= 20 ms with a filter).

Usage: python bench/bench_list_jobs.py [--jobs 10000] [--artifacts 10000] [--repeat 500] [--old-repeat 10]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import redis

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_core.store import ArtifactRecord, AsyncJobStore, new_job_id, state_event
from pruning_server import convert

TENANT = "default"  # the server's one tenant while authentication is off
BAR_MS = 20.0
PAGE = 50
QUERIES = {
    "no filter": pb.ListJobsRequest(page_size=PAGE),
    "states=[RUNNING]": pb.ListJobsRequest(page_size=PAGE, states=[pb.JOB_STATE_RUNNING]),
    "states=[QUEUED,RUNNING]": pb.ListJobsRequest(page_size=PAGE, states=[pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING]),
    "labels={team: infra}": pb.ListJobsRequest(page_size=PAGE, labels={"team": "infra"}),
}


def _path(i: int) -> list[pb.JobState.ValueType]:
    """The states job ``i`` moves through after QUEUED."""
    if i % 40 == 0:
        return []
    if i % 40 == 20:
        return [pb.JOB_STATE_RUNNING]
    return [pb.JOB_STATE_RUNNING, pb.JOB_STATE_FAILED if i % 4 == 1 else pb.JOB_STATE_SUCCEEDED]


KINDS = (pb.ARTIFACT_KIND_MODEL, pb.ARTIFACT_KIND_DATASET, pb.ARTIFACT_KIND_EXPORT, pb.ARTIFACT_KIND_REPORT)
ARTIFACT_QUERIES = {
    "first page": pb.ListArtifactsRequest(page_size=PAGE),
    "kind=MODEL": pb.ListArtifactsRequest(page_size=PAGE, kind=pb.ARTIFACT_KIND_MODEL),
    "20th page": pb.ListArtifactsRequest(page_size=PAGE),  # its token is found first
}


async def populate_artifacts(store: AsyncJobStore, n: int, concurrency: int = 64) -> None:
    summary = {"summary": {"name": "m", "layers": [{"name": f"dense_{i}", "params": i} for i in range(60)]}}
    base = time.time() - n

    async def one(i: int) -> None:
        artifact_id = hashlib.sha256(f"{i}".encode()).hexdigest()
        record = ArtifactRecord(artifact_id, KINDS[i % 4], "keras", f"m{i}.keras", 1 << 20, base + i, summary)
        await store.put_artifact(TENANT, record)

    for start in range(0, n, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))


async def old_artifacts_walk(store: AsyncJobStore, request: pb.ListArtifactsRequest) -> list[str]:
    """The page as ListArtifacts read it before the time indexes: every record of the tenant
    (five fields each, pipelined), then filtered and sorted newest first."""
    ids = [i.decode() for i in await store.redis.smembers(store.keys.tenant_artifacts(TENANT))]
    fields = ("kind", "format", "filename", "size", "created")
    async with store.redis.pipeline(transaction=False) as pipe:
        for artifact_id in ids:
            pipe.hmget(store.keys.tenant_artifact(TENANT, artifact_id), fields)
        rows = await pipe.execute()
    records = sorted(
        (
            (-float(row[4]), artifact_id)
            for artifact_id, row in zip(ids, rows, strict=True)
            if not request.kind or int(row[0]) == request.kind
        ),
    )
    if request.page_token:
        created, _, last = request.page_token.partition(":")
        records = [r for r in records if r > (-float(created), last)]
    return [artifact_id for _, artifact_id in records[: request.page_size]]


async def time_old_artifacts(
    store: AsyncJobStore, request: pb.ListArtifactsRequest, repeat: int
) -> tuple[list[float], list[str]]:
    seconds, ids = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        ids = await old_artifacts_walk(store, request)
        seconds.append(time.perf_counter() - started)
    return seconds, ids


def _move(job: pb.Job, to: pb.JobState.ValueType) -> list[pb.JobEvent]:
    return [state_event(job, to)]


async def populate(store: AsyncJobStore, n: int, concurrency: int = 64) -> None:
    async def one(i: int) -> None:
        labels = {"team": "infra" if i % 20 == 7 else "research"}
        job, _ = await store.create(TENANT, pb.Job(id=new_job_id(), spec=pb.JobSpec(model_id="m"), labels=labels))
        for to in _path(i):
            await store.update(TENANT, job.id, functools.partial(_move, to=to))

    for start in range(0, n, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))


async def old_walk(store: AsyncJobStore, request: pb.ListJobsRequest) -> list[pb.Job]:
    """The first page as ListJobs read it before the indexes (its store loop, kept here)."""
    states = set(request.states)
    jobs: list[pb.Job] = []
    upper = "+"
    while len(jobs) < request.page_size:
        ids = await store.redis.zrevrangebylex(
            store.keys.tenant_jobs(TENANT), upper, "-", start=0, num=request.page_size
        )
        if not ids:
            return jobs
        for raw_id in ids:
            upper = f"({raw_id.decode()}"
            raw = await store.redis.hgetall(store.keys.job(raw_id.decode()))
            if raw:
                job = pb.Job.FromString(raw[b"job"])
                if convert.job_matches(job, states, request.labels):
                    jobs.append(job)
                    if len(jobs) == request.page_size:
                        return jobs
    return jobs


async def time_old(store: AsyncJobStore, request: pb.ListJobsRequest, repeat: int) -> tuple[list[float], list[str]]:
    seconds, ids = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        jobs = await old_walk(store, request)
        seconds.append(time.perf_counter() - started)
        ids = [j.id for j in jobs]
    return seconds, ids


async def time_backfill(store: AsyncJobStore) -> float:
    await store.redis.delete(store.keys.index_version())
    started = time.perf_counter()
    await store.backfill_indexes()
    return time.perf_counter() - started


def time_rpc(call, request, repeat: int) -> tuple[list[float], list[str]]:
    """Seconds of each of ``repeat`` calls, and the ids the last page listed (jobs or artifacts)."""
    for _ in range(min(20, repeat)):  # warm the channel and the server's code paths
        call(request)
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        reply = call(request)
        seconds.append(time.perf_counter() - started)
    listed = reply.jobs if isinstance(reply, pb.ListJobsResponse) else reply.artifacts
    return seconds, [x.id for x in listed]


def percentile(seconds: list[float], p: float) -> float:
    ordered = sorted(seconds)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000


def _wait_port(path: pathlib.Path, process: subprocess.Popen) -> int:
    while not path.exists() or not path.read_text():
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        time.sleep(0.05)
    return int(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000, help="jobs of the one tenant")
    parser.add_argument("--artifacts", type=int, default=10000, help="artifact records of the one tenant")
    parser.add_argument("--repeat", type=int, default=500, help="timed ListJobs calls per query")
    parser.add_argument(
        "--old-repeat", type=int, default=10, help="timed runs of the walk before the indexes per query (0: none)"
    )
    args = parser.parse_args()
    url = os.environ.get("PRUNING_REDIS_URL", "redis://127.0.0.1:6379/9")
    prefix = f"pruning-bench-{uuid.uuid4().hex[:8]}"
    store = AsyncJobStore.from_url(url, prefix)
    loop = asyncio.new_event_loop()
    rows = []
    artifact_rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        env = {
            **os.environ,
            "PRUNING_REDIS_URL": url,
            "PRUNING_KEY_PREFIX": prefix,
            "PRUNING_QUEUE": prefix,
            "PRUNING_STATE_DIR": str(tmp / "state"),
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "pruning_server", "--listen", "127.0.0.1:0", "--port-file", str(tmp / "port")],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            target = f"127.0.0.1:{_wait_port(tmp / 'port', server)}"
            started = time.perf_counter()
            loop.run_until_complete(populate(store, args.jobs))
            print(f"{args.jobs:,} jobs written through the store in {time.perf_counter() - started:.1f} s")
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.PruningServiceStub(channel)
                for name, request in QUERIES.items():
                    new, new_ids = time_rpc(stub.ListJobs, request, args.repeat)
                    old: list[float] = []
                    if args.old_repeat:
                        old, old_ids = loop.run_until_complete(time_old(store, request, args.old_repeat))
                        assert new_ids == old_ids, f"{name}: the two paths listed different jobs"
                    rows.append((name, len(new_ids), new, old))
            backfill_s = loop.run_until_complete(time_backfill(store))
            if args.artifacts:
                started = time.perf_counter()
                loop.run_until_complete(populate_artifacts(store, args.artifacts))
                print(f"{args.artifacts:,} artifact records written in {time.perf_counter() - started:.1f} s")
                with grpc.insecure_channel(target) as channel:
                    stub = pb_grpc.PruningServiceStub(channel)
                    token = ""
                    for _ in range(19):
                        token = stub.ListArtifacts(
                            pb.ListArtifactsRequest(page_size=PAGE, page_token=token)
                        ).next_page_token
                    ARTIFACT_QUERIES["20th page"].page_token = token
                    for name, request in ARTIFACT_QUERIES.items():
                        new, new_ids = time_rpc(stub.ListArtifacts, request, args.repeat)
                        old = []
                        if args.old_repeat:
                            old, old_ids = loop.run_until_complete(time_old_artifacts(store, request, args.old_repeat))
                            assert new_ids == old_ids, f"{name}: the two paths listed different artifacts"
                        artifact_rows.append((name, len(new_ids), new, old))
        finally:
            server.terminate()
            server.wait()
            loop.run_until_complete(store.redis.aclose())
            loop.close()
            r = redis.Redis.from_url(url)
            keys = list(r.scan_iter(f"{prefix}*"))
            for start in range(0, len(keys), 1000):
                r.delete(*keys[start : start + 1000])

    print(
        f"{args.jobs:,} jobs of one tenant, first page of {PAGE}, {args.repeat} ListJobs calls per query "
        f"(client and server in separate processes); the old walk {args.old_repeat} times, in-process"
    )
    header = ("query", "jobs on the page", "p50 ms", "p99 ms", "bar (p99 <= 20 ms)", "old walk p50 ms", "old p99 ms")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, found, new, old in rows:
        p99 = percentile(new, 99)
        holds = "-" if name == "no filter" else ("yes" if p99 <= BAR_MS else "**no**")
        old_cells = (f"{statistics.median(old) * 1000:.1f}", f"{percentile(old, 99):.1f}") if old else ("-", "-")
        print(
            f"| {name} | {found} | {statistics.median(new) * 1000:.2f} | {p99:.2f} | {holds} | "
            + " | ".join(old_cells)
            + " |"
        )
    print(f"start-up backfill of the same {args.jobs:,} jobs: {backfill_s:.2f} s")
    if artifact_rows:
        print()
        print(
            f"{args.artifacts:,} artifact records of one tenant, pages of {PAGE}, {args.repeat} ListArtifacts calls each"
        )
        header = (
            "query",
            "artifacts on the page",
            "p50 ms",
            "p99 ms",
            "bar (p99 <= 20 ms)",
            "old walk p50 ms",
            "old p99 ms",
        )
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for name, found, new, old in artifact_rows:
            p99 = percentile(new, 99)
            old_cells = (f"{statistics.median(old) * 1000:.1f}", f"{percentile(old, 99):.1f}") if old else ("-", "-")
            print(
                f"| {name} | {found} | {statistics.median(new) * 1000:.2f} | {p99:.2f} | "
                f"{'yes' if p99 <= BAR_MS else '**no**'} | " + " | ".join(old_cells) + " |"
            )


if __name__ == "__main__":
    main()
