"""One tenant cannot fill the queue: past PRUNING_MAX_ACTIVE_JOBS_PER_TENANT jobs queued or
running, CreateJob and CreateSweep get RESOURCE_EXHAUSTED with a retry hint, while retries
of what it made, dry runs and other tenants go on; a job that ends makes room."""

from __future__ import annotations

import time

import pytest
from hostile import hostile_server, tiny  # noqa: F401 - fixture

from conftest import wait_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, InvalidArgument, ResourceExhausted, constant_sparsity, job_spec, sweep_spec

pytestmark = pytest.mark.integration
CAP = 3


def test_a_tenant_past_its_active_jobs_is_refused_and_others_are_not(env, tiny):  # noqa: F811
    server = hostile_server(
        env, "quota", max_active_jobs_per_tenant=CAP, key_prefix=f"{env['PRUNING_KEY_PREFIX']}:quota"
    )  # its own jobs only
    try:
        with Client(server.target, api_key="key-a", timeout=30) as a, Client(server.target, api_key="key-b") as b:
            spec = job_spec(a.upload_model(tiny["keras"]).id, dataset=a.upload_dataset(tiny["data"]).id)
            jobs = [a.submit(spec, idempotency_key=f"k{i}") for i in range(CAP)]
            with pytest.raises(ResourceExhausted, match="3 jobs of this tenant are queued, running or being cancelled"):
                a.submit(spec)
            with pytest.raises(ResourceExhausted):
                a.create_sweep(sweep_spec(spec, sparsities=[0.5]))
            with pytest.raises(InvalidArgument):  # a bad request hears what is wrong with it first
                a.submit(job_spec(spec.model_id, dataset=spec.dataset.artifact_id, schedule=constant_sparsity(1.0)))
            assert a.submit(spec, idempotency_key="k0").id == jobs[0].id  # a retry gets its job
            assert a.validate(spec).layers  # a dry run queues nothing
            spec_b = job_spec(b.upload_model(tiny["keras"]).id, dataset=b.upload_dataset(tiny["data"]).id)
            assert b.submit(spec_b).status().state == pb.JOB_STATE_QUEUED  # another tenant is not held up
            a.cancel_job(jobs[0].id)  # ended: room for one more
            assert a.submit(spec).status().state == pb.JOB_STATE_QUEUED
            with pytest.raises(ResourceExhausted):
                a.submit(spec)
    finally:
        server.stop()


def test_a_burst_of_creates_stops_at_the_bound(env, tiny):  # noqa: F811
    """Concurrent CreateJob and CreateSweep calls cannot pass the bound together (40 calls
    made 35 jobs at a bound of 5, 20 sweeps 61 jobs): a job's record is bounded in the script
    that writes it, a tenant's sweeps are created one at a time, and a sweep queues its trials
    only within the bound (it passed it by a sweep's parallel trials less one before)."""
    import concurrent.futures

    prefix = f"{env['PRUNING_KEY_PREFIX']}:quota-burst"
    server = hostile_server(env, "quota-burst", max_active_jobs_per_tenant=5, key_prefix=prefix)
    try:
        with Client(server.target, api_key="key-a", timeout=60) as a, Client(server.target, api_key="key-b") as b:
            spec = job_spec(a.upload_model(tiny["keras"]).id, dataset=a.upload_dataset(tiny["data"]).id)

            def submit(_):
                try:
                    return a.submit(spec).id
                except ResourceExhausted:
                    return None

            with concurrent.futures.ThreadPoolExecutor(40) as pool:
                made = [i for i in pool.map(submit, range(40)) if i]
            assert len(made) == 5
            assert len([j for j in a.list_jobs() if j.state == pb.JOB_STATE_QUEUED]) == 5

            spec_b = job_spec(b.upload_model(tiny["keras"]).id, dataset=b.upload_dataset(tiny["data"]).id)

            def sweep(_):
                try:
                    return b.create_sweep(sweep_spec(spec_b, sparsities=[0.5, 0.8], parallel_trials=2)).id
                except ResourceExhausted:
                    return None

            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                sweeps = [i for i in pool.map(sweep, range(20)) if i]

            def active() -> int:
                return len([j for j in b.list_jobs() if j.state == pb.JOB_STATE_QUEUED])

            wait_for(lambda: active() == 5, 30, "the sweeps' trials up to the bound")
            time.sleep(5 * server.settings.sweep_interval_s + 0.5)  # the driver's next steps queue none past it
            print(f"{len(sweeps)} sweeps created, {active()} trials queued")
            assert len(sweeps) >= 3 and active() == 5  # a sweep queues its trials only within the bound
    finally:
        server.stop()


def test_a_tenant_past_its_stored_bytes_is_refused_until_it_deletes(env, tmp_path):
    """PRUNING_MAX_STORED_BYTES_PER_TENANT: an upload that would take the tenant past it gets
    RESOURCE_EXHAUSTED (its partial file removed), another tenant is not held up, and deleting
    an artifact makes room; the count follows records as they come and go, and a deployment
    from before the count makes it from the records."""
    import asyncio

    from hostile import npz_bytes

    files = []
    for seed in range(3):
        path = tmp_path / f"d{seed}.npz"
        path.write_bytes(npz_bytes(seed=seed))
        files.append(path)
    size = files[0].stat().st_size
    prefix = f"{env['PRUNING_KEY_PREFIX']}:bytes"
    server = hostile_server(env, "bytes", key_prefix=prefix, max_stored_bytes_per_tenant=2 * size + size // 2)

    def stored(tenant: str) -> int:
        return asyncio.run_coroutine_threadsafe(server.running.store.stored_bytes(tenant), server.loop).result(10)

    try:
        with Client(server.target, api_key="key-a", timeout=30) as a, Client(server.target, api_key="key-b") as b:
            first = a.upload_dataset(files[0])
            assert a.upload_dataset(files[0]).id == first.id  # its own record again: no more bytes
            assert stored("tenant-a") == size
            a.upload_dataset(files[1])
            assert stored("tenant-a") == 2 * size
            with pytest.raises(ResourceExhausted, match="this tenant stores .* its quota is") as full:
                a.upload_dataset(files[2])
            assert full.value.retry_after_s is None  # waiting frees nothing: no hint
            assert b.upload_dataset(files[2]).size == size  # the other tenant has its own room
            a.delete_artifact(first.id)
            assert stored("tenant-a") == size
            assert a.upload_dataset(files[2]).size == size
            assert stored("tenant-a") == 2 * size
            # A count lost (or never made, before this version) is made again from the records.
            asyncio.run_coroutine_threadsafe(
                server.running.store.redis.delete(server.running.store.keys.tenant_bytes("tenant-a")), server.loop
            ).result(10)
            assert stored("tenant-a") == 2 * size
    finally:
        server.stop()


@pytest.mark.parametrize("announced", [True, False])
def test_concurrent_uploads_cannot_pass_the_stored_bytes_together(env, tmp_path, announced):
    """Four uploads of one tenant under way at once, each of a size the quota holds two and a
    half times: at most two are stored, whether their size was announced or not (before, each
    looked at the stored bytes as it started, and all four were stored). Each upload reserves
    its bytes in Redis ahead of what arrives; a refused or finished upload's reservation ends,
    and one left by a server that died lapses."""
    import asyncio
    import threading

    import grpc
    from hostile import npz_bytes

    blobs = [npz_bytes(n_train=256, seed=seed) for seed in range(4)]
    size = len(blobs[0])
    prefix = f"{env['PRUNING_KEY_PREFIX']}:reserve-{announced}"
    server = hostile_server(env, f"reserve-{announced}", key_prefix=prefix, max_stored_bytes_per_tenant=5 * size // 2)
    store = server.running.store

    def on_loop(coro):
        return asyncio.run_coroutine_threadsafe(coro, server.loop).result(10)

    under_way, lock, everyone = [0], threading.Lock(), threading.Event()

    def requests(blob: bytes):
        yield pb.UploadRequest(header=pb.UploadHeader(filename="d.npz", size=size if announced else 0))
        yield pb.UploadRequest(chunk=blob[:100])
        with lock:
            under_way[0] += 1
            if under_way[0] == len(blobs):
                everyone.set()
        # Every upload is under way before any sends the rest (one refused at its header is
        # never asked for more: the others go on after a while).
        everyone.wait(5)
        for at in range(100, len(blob), 4096):
            yield pb.UploadRequest(chunk=blob[at : at + 4096])

    outcomes: list = [None] * len(blobs)

    def upload(i: int, client: Client) -> None:
        try:
            outcomes[i] = client.stub.UploadDataset(requests(blobs[i]), metadata=client._metadata, timeout=60).size
        except grpc.RpcError as error:
            outcomes[i] = error

    try:
        with Client(server.target, api_key="key-a", timeout=30) as a:
            threads = [threading.Thread(target=upload, args=(i, a)) for i in range(len(blobs))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            stored = [o for o in outcomes if o == size]
            refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
            assert len(stored) + len(refused) == len(blobs), outcomes
            # Announced sizes are reserved whole: two fit. Unannounced ones grow side by side
            # and may all be refused at once (none can know the others' sizes): never more.
            assert len(stored) == 2 if announced else len(stored) <= 2, outcomes
            for error in refused:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "its quota is" in error.details()
            assert on_loop(store.stored_bytes("tenant-a")) == len(stored) * size
            assert on_loop(store.redis.hlen(store.keys.tenant_reserved("tenant-a"))) == 0  # all ended
            # Another upload under way holds the room: a retry hint, since it ends or lapses.
            key = store.keys.tenant_reserved("tenant-a")
            on_loop(store.redis.hset(key, "elsewhere", f"{5 * size // 2} {2**50}"))
            free = tmp_path / "free.npz"
            free.write_bytes(npz_bytes(n_train=64, seed=9))
            with pytest.raises(ResourceExhausted, match="in other uploads under way.*retry in") as busy:
                a.upload_dataset(free)
            assert busy.value.retry_after_s == server.settings.retry_after_s  # the SDK reads the hint
            # One its server left behind (it died mid-upload) no longer counts once it lapsed.
            on_loop(store.redis.hset(key, "elsewhere", f"{size} 1"))
            assert a.upload_dataset(free).size == free.stat().st_size
            assert on_loop(store.redis.hexists(key, "elsewhere")) == 0
    finally:
        server.stop()


def test_a_reservation_is_renewed_while_its_upload_goes_on_and_lapses_after(env):
    """An upload's reservation is renewed every hold/3 (a slow upload keeps its room past the
    hold), and one no server renews any more lapses after the hold."""
    import asyncio

    from pruning_server.errors import Failure
    from pruning_server.limits import Reservation

    prefix = f"{env['PRUNING_KEY_PREFIX']}:renew"
    server = hostile_server(env, "renew", key_prefix=prefix)
    store = server.running.store

    async def scenario():
        slow = Reservation(store, "tenant-r", "dataset", 150, hold_s=0.3, step=0, retry_after_s=1)
        await slow.need(100)
        await store.stored_bytes("tenant-r")  # the count exists: a job's exports add to it
        await store.redis.incrby(store.keys.tenant_bytes("tenant-r"), 100)  # never refused
        await asyncio.sleep(1.2)  # four holds: only renewals keep it, past the quota or not
        kept = await store.redis.hexists(store.keys.tenant_reserved("tenant-r"), slow.token)
        await store.redis.delete(store.keys.tenant_bytes("tenant-r"))
        other = Reservation(store, "tenant-r", "dataset", 150, hold_s=0.3, step=0, retry_after_s=1)
        try:
            await other.need(100)
            refused_while_renewed = False
        except Failure:
            refused_while_renewed = True
        if slow._renewing is not None:
            slow._renewing.cancel()  # its server died: nobody renews it
        await asyncio.sleep(0.6)
        await other.need(100)  # lapsed: room again
        await other.release()
        return kept, refused_while_renewed, await store.redis.hlen(store.keys.tenant_reserved("tenant-r"))

    try:
        kept, refused, left = asyncio.run_coroutine_threadsafe(scenario(), server.loop).result(30)
        assert kept  # what was granted stays granted (a renewal asking the quota again lost it)
        assert refused
        assert left == 0
    finally:
        server.stop()


def test_a_lapsed_reservation_is_not_renewed_back_over_the_quota(env):
    """A renewal that comes after its reservation lapsed (Redis or the server stalled past the
    hold) does not bring it back: another upload may hold its room by then. The upload reserves
    again with its next chunk, against the quota."""
    import asyncio

    from pruning_server.errors import Failure
    from pruning_server.limits import Reservation

    prefix = f"{env['PRUNING_KEY_PREFIX']}:lapsed"
    server = hostile_server(env, "lapsed", key_prefix=prefix)
    store = server.running.store
    key = store.keys.tenant_reserved("tenant-l")

    async def scenario():
        late = Reservation(store, "tenant-l", "dataset", 150, hold_s=0.2, step=0, retry_after_s=1)
        await late.need(100)
        late._renewing.cancel()  # its renewals stall past the hold
        await asyncio.sleep(0.4)
        taker = Reservation(store, "tenant-l", "dataset", 150, hold_s=30, step=0, retry_after_s=1)
        await taker.need(100)  # the lapsed room is granted to another upload
        renewed = await store.renew_bytes("tenant-l", late.token, 100, 30)  # the stalled renewal arrives
        after = await store.redis.hkeys(key)
        late.held = 0  # as _renew does on a lapse: the next chunk reserves again
        try:
            await late.need(110)
            refused = False
        except Failure:
            refused = True
        await taker.release()
        return renewed, sorted(k.decode() if isinstance(k, bytes) else k for k in after), refused, taker.token

    try:
        renewed, after, refused, taker = asyncio.run_coroutine_threadsafe(scenario(), server.loop).result(30)
        assert renewed is False and after == [taker]  # not brought back over the quota
        assert refused  # reserving again meets the quota: 100 held by the other upload + 110 > 150
    finally:
        on_loop = server.loop
        asyncio.run_coroutine_threadsafe(store.redis.delete(key), on_loop).result(10)
        server.stop()
