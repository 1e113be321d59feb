"""Sweeps on a real Redis and a real server of their own, with no worker: trials are written
as a worker would leave them. A budget without a baseline is refused; a cancelled sweep's
trials follow their jobs to their end (for a sweep and for the search of a job with a budget);
a trial queued while its sweep is cancelled is cancelled with it; ListSweeps pages by where the
last page ended, and a page token it did not make is refused with its field."""

from __future__ import annotations

import asyncio
import time
import types
import uuid

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from conftest import ServerThread, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_core import sweeps
from pruning_core.store import AsyncJobStore, JobStore, new_job_id, state_event
from pruning_core.sweeps import SweepStore
from pruning_server.sweeps import advance

pytestmark = pytest.mark.integration
TENANT = "default"  # a server without API keys


@pytest.fixture
def deployment(env):
    """A server on keys and a queue of its own; yields it and its key prefix."""
    prefix = f"{env['PRUNING_KEY_PREFIX']}:sweep-fixes-{uuid.uuid4().hex[:8]}"
    server = ServerThread(
        settings_for(env, key_prefix=prefix, queue=f"{env['PRUNING_QUEUE']}-sweep-fixes", sweep_interval_s=0.1)
    )
    yield server, prefix
    server.stop()


def _with_stores(url: str, prefix: str, work):
    async def run():
        store = AsyncJobStore.from_url(url, prefix)
        try:
            return await work(store, SweepStore(store.redis, prefix))
        finally:
            await store.redis.aclose()

    return asyncio.run(run())


def _running_sweep(url: str, prefix: str, for_a_job: bool) -> tuple[str, str, str]:
    """A sweep whose one trial's job a worker runs; with ``for_a_job`` the search of a job with
    a budget. Returns the ids of the sweep, the trial's job and the job searched for."""

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> tuple[str, str, str]:
        trial_job, _ = await store.create(TENANT, pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))
        await store.update(TENANT, trial_job.id, lambda j: [state_event(j, pb.JOB_STATE_RUNNING)])
        budget = pb.AccuracyBudget(max_loss_pp=1.0)
        spec = sweeps.with_defaults(pb.SweepSpec(sparsities=[0.5], budget=budget))
        sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_RUNNING, spec=spec)
        sweep.trials.add(index=0, sparsity=0.5, job_id=trial_job.id, state=pb.JOB_STATE_RUNNING)
        if for_a_job:
            parent = pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED, search_sweep_id=sweep.id)
            parent.spec.budget.CopyFrom(budget)
            await store.create(TENANT, parent)
            sweep.job_id = parent.id
        await sweep_store.create(TENANT, sweep, "", "")
        return sweep.id, trial_job.id, sweep.job_id

    return _with_stores(url, prefix, work)


@pytest.mark.parametrize("cancel", ["CancelSweep", "CancelJob of a job with a budget"])
def test_a_cancelled_sweeps_trials_follow_their_jobs_to_the_end(deployment, redis_url, cancel):
    server, prefix = deployment
    sweep_id, trial_job_id, job_id = _running_sweep(redis_url, prefix, for_a_job=cancel != "CancelSweep")
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SweepServiceStub(channel)
        if job_id:
            cancelled_job = pb_grpc.PruningServiceStub(channel).CancelJob(pb.CancelJobRequest(job_id=job_id))
            assert cancelled_job.state == pb.JOB_STATE_CANCELLED
        else:
            stub.CancelSweep(pb.CancelSweepRequest(sweep_id=sweep_id))
        sweep = stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id))
        assert sweep.state == pb.JOB_STATE_CANCELLED
        assert sweep.trials[0].state == pb.JOB_STATE_CANCELLING  # its worker has yet to stop

        jobs = JobStore.from_url(redis_url, prefix)
        error = pb.JobError(code=code_pb2.CANCELLED, message="cancelled while running")
        jobs.update(trial_job_id, lambda j: [state_event(j, pb.JOB_STATE_CANCELLED, error)])  # the worker stops

        deadline = time.monotonic() + 10
        while (trial := stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id)).trials[0]).state != pb.JOB_STATE_CANCELLED:
            assert time.monotonic() < deadline, f"the trial stayed {pb.JobState.Name(trial.state)}"
            time.sleep(0.1)
        assert trial.error.code == code_pb2.CANCELLED


def test_a_trial_queued_as_its_sweep_is_cancelled_is_cancelled_too(redis_url):
    prefix = f"test-sweep-fixes-{uuid.uuid4().hex[:8]}"
    created: list[str] = []
    cancelled: list[str] = []

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> pb.Sweep:
        spec = sweeps.with_defaults(pb.SweepSpec(sparsities=[0.5, 0.6], parallel_trials=2))
        sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_QUEUED, spec=spec)
        await sweep_store.create(TENANT, sweep, "", "")

        def end(current: pb.Sweep) -> bool:
            current.state = pb.JOB_STATE_CANCELLED
            return True

        async def create_job(tenant: str, request: pb.CreateJobRequest, sweep_id: str = "", max_active=None) -> pb.Job:
            job, _ = await store.create(tenant, pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))
            created.append(job.id)
            await sweep_store.update(tenant, sweep_id, end)  # CancelSweep lands meanwhile
            return job

        async def cancel_job(tenant: str, job_id: str) -> None:
            cancelled.append(job_id)

        jobs = types.SimpleNamespace(
            store=store,
            create_job=create_job,
            cancel_job=cancel_job,
            settings=types.SimpleNamespace(max_active_jobs_per_tenant=0),
        )
        try:
            return await advance(jobs, sweep_store, sweep.id)
        finally:
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:*")])

    done = _with_stores(redis_url, prefix, work)
    assert done.state == pb.JOB_STATE_CANCELLED and not done.trials
    assert len(created) == 1 and cancelled == created  # cancelled, and no second trial queued


def _fields(error: grpc.RpcError) -> list[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    rpc_status.from_call(error).details[0].Unpack(bad)
    return [v.field for v in bad.field_violations]


def test_a_budget_without_the_baseline_is_refused(deployment):
    server, _ = deployment
    spec = pb.JobSpec(model_id="ab" * 32, budget=pb.AccuracyBudget(max_relative_loss_percent=1.0))
    spec.dataset.builtin = "mnist"
    spec.pruning.schedule.constant_sparsity.target_sparsity = 0.5
    spec.training.skip_baseline = True
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as job_error:
            pb_grpc.PruningServiceStub(channel).CreateJob(pb.CreateJobRequest(spec=spec))
        base = pb.JobSpec()
        base.CopyFrom(spec)
        base.ClearField("budget")
        sweep = pb.SweepSpec(base=base, sparsities=[0.5], budget=spec.budget)
        with pytest.raises(grpc.RpcError) as sweep_error:
            pb_grpc.SweepServiceStub(channel).CreateSweep(pb.CreateSweepRequest(spec=sweep))
    assert "spec.training.skip_baseline" in _fields(job_error.value)
    assert "spec.base.training.skip_baseline" in _fields(sweep_error.value)


@pytest.mark.parametrize(
    "token",
    ["99999999999999999999", "9223372036854775807", "²", "-1", " 1", "1e999:" + "a" * 24, "1.5:" + "z" * 24, "1.5:ab"],
)
def test_a_page_token_listsweeps_did_not_make_is_refused(deployment, token):
    server, _ = deployment
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as error:
            pb_grpc.SweepServiceStub(channel).ListSweeps(pb.ListSweepsRequest(page_token=token))
    assert _fields(error.value) == ["page_token"]


def test_the_page_tokens_listsweeps_returns_page_through_the_sweeps(deployment, redis_url):
    server, prefix = deployment

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> list[str]:
        ids = []
        for _ in range(3):
            sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_CANCELLED)
            await sweep_store.create(TENANT, sweep, "", "")
            ids.append(sweep.id)
        return ids

    ids = _with_stores(redis_url, prefix, work)
    seen, token = [], ""
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SweepServiceStub(channel)
        while True:
            page = stub.ListSweeps(pb.ListSweepsRequest(page_size=2, page_token=token))
            seen += [s.id for s in page.sweeps]
            if not (token := page.next_page_token):
                break
    assert sorted(seen) == sorted(ids)


def test_sweeps_made_or_deleted_between_pages_neither_repeat_nor_hide_others(deployment, redis_url):
    """Pages by where the last one ended, not by offset: a sweep created between pages came
    again on the next page (4 repeats in 14 entries), one deleted hid another. Sweeps sharing
    one creation time (a tie in the index) are paged through too."""
    server, prefix = deployment

    async def make(store: AsyncJobStore, sweep_store: SweepStore, n: int = 1) -> list[str]:
        ids = []
        for _ in range(n):
            sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_CANCELLED)
            await sweep_store.create(TENANT, sweep, "", "")
            ids.append(sweep.id)
        return ids

    first = _with_stores(redis_url, prefix, lambda store, ss: make(store, ss, 9))

    async def tie(store: AsyncJobStore, sweep_store: SweepStore) -> None:  # three share a score
        index = sweep_store._tenant_index(TENANT)
        score = await store.redis.zscore(index, first[4])
        await store.redis.zadd(index, {first[3]: score, first[5]: score}, xx=True)

    _with_stores(redis_url, prefix, tie)
    seen, token, pages = [], "", 0
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SweepServiceStub(channel)
        while True:
            page = stub.ListSweeps(pb.ListSweepsRequest(page_size=2, page_token=token))
            seen += [s.id for s in page.sweeps]
            pages += 1
            if pages == 2:  # between pages: two new sweeps, and one not listed yet deleted
                _with_stores(redis_url, prefix, lambda store, ss: make(store, ss, 2))
                _with_stores(redis_url, prefix, lambda store, ss: ss.delete(first[0]))
            if not (token := page.next_page_token):
                break
    assert len(seen) == len(set(seen)), "a sweep came twice"
    assert set(first[1:]) <= set(seen), "a sweep was skipped"
    assert first[0] not in seen


def test_an_unknown_model_is_named_where_the_request_has_it(deployment):
    server, _ = deployment
    spec = pb.JobSpec(model_id="ab" * 32)
    spec.dataset.builtin = "mnist"
    spec.pruning.schedule.constant_sparsity.target_sparsity = 0.5
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as sweep_error:
            pb_grpc.SweepServiceStub(channel).CreateSweep(
                pb.CreateSweepRequest(spec=pb.SweepSpec(base=spec, sparsities=[0.5]))
            )
        spec.budget.max_loss_pp = 1.0
        with pytest.raises(grpc.RpcError) as job_error:
            pb_grpc.PruningServiceStub(channel).CreateJob(pb.CreateJobRequest(spec=spec))
    assert sweep_error.value.code() == grpc.StatusCode.NOT_FOUND
    assert sweep_error.value.details().startswith("spec.base.model_id: no artifact")
    assert job_error.value.code() == grpc.StatusCode.NOT_FOUND
    assert job_error.value.details().startswith("spec.model_id: no artifact")


def test_an_offset_token_of_an_older_server_still_pages(deployment, redis_url):
    """Through a rolling upgrade a client may bring a page token an older server made (an
    offset into the newest-first list): it goes on after that many sweeps."""
    server, prefix = deployment

    async def make(store: AsyncJobStore, sweep_store: SweepStore) -> list[str]:
        for _ in range(4):
            await sweep_store.create(TENANT, pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_CANCELLED), "", "")
        return [i.decode() for i in await store.redis.zrevrange(sweep_store._tenant_index(TENANT), 0, -1)]

    newest_first = _with_stores(redis_url, prefix, make)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SweepServiceStub(channel)
        rest = stub.ListSweeps(pb.ListSweepsRequest(page_size=10, page_token="2"))
        past = stub.ListSweeps(pb.ListSweepsRequest(page_size=10, page_token="40"))
    assert [s.id for s in rest.sweeps] == newest_first[2:] and not rest.next_page_token
    assert not past.sweeps


def _bounded_jobs(store: AsyncJobStore, cap: int, pause_s: float = 0.0) -> types.SimpleNamespace:
    """What advance() needs of the service: trials written under the bound it passes, refused
    as the service refuses them (Exhausted); ``pause_s`` before each write lets sweeps
    advanced side by side interleave."""
    from pruning_core.store import TooManyActiveJobs
    from pruning_server.errors import Exhausted

    async def create_job(tenant: str, request: pb.CreateJobRequest, sweep_id: str = "", max_active=None) -> pb.Job:
        await asyncio.sleep(pause_s)  # the service's checks take time: another sweep runs meanwhile
        try:
            job, _ = await store.create(
                tenant, pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED), max_active=max_active or 0
            )
        except TooManyActiveJobs as exc:
            raise Exhausted(str(exc), 1.0) from None
        return job

    return types.SimpleNamespace(
        store=store,
        create_job=create_job,
        cancel_job=None,
        settings=types.SimpleNamespace(max_active_jobs_per_tenant=cap),
    )


def test_a_sweep_queues_trials_only_within_the_tenant_s_cap_on_active_jobs(redis_url):
    """A tenant at its cap less one, a sweep of three parallel trials: one trial is queued, the
    others once room frees up. The search job of a job with a budget does not count."""
    prefix = f"test-sweep-cap-{uuid.uuid4().hex[:8]}"

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> list[int]:
        other, _ = await store.create(TENANT, pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))
        parent, _ = await store.create(TENANT, pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))
        spec = sweeps.with_defaults(pb.SweepSpec(sparsities=[0.5, 0.6, 0.7], parallel_trials=3))
        sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_QUEUED, spec=spec, job_id=parent.id)
        await sweep_store.create(TENANT, sweep, "", "")
        jobs = _bounded_jobs(store, cap=2)
        queued = []
        try:
            queued.append(len((await advance(jobs, sweep_store, sweep.id)).trials))
            queued.append(len((await advance(jobs, sweep_store, sweep.id)).trials))  # no room yet
            await store.update(TENANT, other.id, lambda j: [state_event(j, pb.JOB_STATE_CANCELLED)])
            queued.append(len((await advance(jobs, sweep_store, sweep.id)).trials))
            return queued
        finally:
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:*")])

    assert _with_stores(redis_url, prefix, work) == [1, 1, 2]


def test_sweeps_advanced_side_by_side_cannot_pass_the_cap_together(redis_url):
    """Two sweeps of one tenant advanced at once both see the same room; the bound checked in
    the script that writes each trial's record keeps them within it, and the trial that found
    no room waits for a later step instead of failing."""
    prefix = f"test-sweep-race-{uuid.uuid4().hex[:8]}"

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> tuple[int, list[int]]:
        ids = []
        for _ in range(2):
            spec = sweeps.with_defaults(pb.SweepSpec(sparsities=[0.5, 0.6], parallel_trials=2))
            sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_QUEUED, spec=spec)
            await sweep_store.create(TENANT, sweep, "", "")
            ids.append(sweep.id)
        jobs = _bounded_jobs(store, cap=3, pause_s=0.05)
        try:
            done = await asyncio.gather(*(advance(jobs, sweep_store, i) for i in ids))
            failed = [t for s in done for t in s.trials if t.state == pb.JOB_STATE_FAILED]
            assert not failed, "a trial without room was failed instead of waiting"
            return await store.active_jobs(TENANT), sorted(len(s.trials) for s in done)
        finally:
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:*")])

    active, trials = _with_stores(redis_url, prefix, work)
    assert active == 3 and trials == [1, 2]


def test_creates_under_one_idempotency_key_make_one_sweep_even_all_at_once(redis_url):
    """The key and the record are written together: a retry (the SDK sends CreateSweep again
    after UNAVAILABLE) or a concurrent twin finds the sweep, never a key without it."""
    prefix = f"test-sweep-idem-{uuid.uuid4().hex[:8]}"
    spec = sweeps.with_defaults(pb.SweepSpec(sparsities=[0.5, 0.6]))

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> tuple[list, str]:
        try:

            async def create(fingerprint: str) -> tuple[pb.Sweep, bool]:
                sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_QUEUED, spec=spec)
                return await sweep_store.create(TENANT, sweep, "key-1", fingerprint)

            made = await asyncio.gather(*(create("f") for _ in range(20)))
            try:
                await create("another request")
                other = ""
            except ValueError as error:
                other = str(error)
            return made, other
        finally:
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:*")])

    made, other = _with_stores(redis_url, prefix, work)
    assert [created for _, created in made].count(True) == 1
    assert len({sweep.id for sweep, _ in made}) == 1
    assert "idempotency_key was used for a different request" in other


def test_cancelling_a_cancelled_sweep_cancels_the_trials_a_first_call_left_going(redis_url):
    """The SDK sends CancelSweep again after UNAVAILABLE: a first call that ended the sweep and
    then broke off before its trials leaves them to the second, which answered the record and
    left them running."""
    from pruning_server.sweeps import SweepServicer

    prefix = f"test-sweep-recancel-{uuid.uuid4().hex[:8]}"

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> tuple[pb.Sweep, list[str], str]:
        try:
            job, _ = await store.create(TENANT, pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))
            trial = pb.Trial(index=0, sparsity=0.5, job_id=job.id, state=pb.JOB_STATE_QUEUED)
            spec = sweeps.with_defaults(pb.SweepSpec(sparsities=[0.5]))
            sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_CANCELLED, spec=spec, trials=[trial])
            await sweep_store.create(TENANT, sweep, "", "")  # ended by the first call, its trial still queued
            cancelled: list[str] = []

            async def cancel_job(tenant: str, job_id: str) -> None:
                cancelled.append(job_id)

            servicer = SweepServicer(types.SimpleNamespace(store=store, cancel_job=cancel_job), sweep_store)  # type: ignore[arg-type]
            return await servicer._cancel(TENANT, sweep.id), cancelled, job.id
        finally:
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:*")])

    answered, cancelled, job_id = _with_stores(redis_url, prefix, work)
    assert answered.state == pb.JOB_STATE_CANCELLED and cancelled == [job_id]


def test_a_burst_of_one_tenants_sweep_creations_asks_redis_once_at_a_time(redis_url):
    """Sixty creations of one tenant at once: each waited for the tenant's creation lock by
    asking Redis 50 times a second (about 1,500 SETs for this burst, every tenant's calls slowed
    behind them). Within a process they now queue on a local lock: one SET each, one holder at a
    time, and a creation that waits past its bound is refused with a retry hint."""
    from pruning_server.errors import Failure
    from pruning_server.sweeps import SweepServicer

    prefix = f"test-sweep-burst-{uuid.uuid4().hex[:8]}"

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> tuple[int, int, int, list[str], int]:
        jobs = types.SimpleNamespace(store=store, settings=types.SimpleNamespace(retry_after_s=5.0))
        servicer = SweepServicer(jobs, sweep_store)  # type: ignore[arg-type]
        sets, holding, most = 0, 0, 0
        real_set = sweep_store.redis.set

        async def counted_set(*args, **kwargs):
            nonlocal sets
            sets += 1
            return await real_set(*args, **kwargs)

        sweep_store.redis.set = counted_set  # type: ignore[method-assign]

        async def create(hold_s: float, wait_s: float = 10.0) -> str:
            nonlocal holding, most
            try:
                async with servicer._creating(TENANT, wait_s):
                    holding += 1
                    most = max(most, holding)
                    await asyncio.sleep(hold_s)
                    holding -= 1
                return "created"
            except Failure as exc:
                return exc.code.name

        try:
            done = await asyncio.gather(*(create(0.005) for _ in range(60)))
            assert done == ["created"] * 60
            burst_sets = sets
            # one holds the lock 0.5 s; one waiting at most 0.1 s is refused, one waiting 2 s is not
            answers = await asyncio.gather(create(0.5), create(0, wait_s=0.1), create(0, wait_s=2.0))
            return burst_sets, most, len(servicer._local_creations), answers, sets - burst_sets
        finally:
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:*")] or [f"{prefix}:none"])

    burst_sets, most, left, answers, later_sets = _with_stores(redis_url, prefix, work)
    assert burst_sets == 60 and most == 1  # one SET per creation, never two holders
    assert answers == ["created", "RESOURCE_EXHAUSTED", "created"]
    assert later_sets == 2 and left == 0  # the refused one never asked Redis; nothing kept per tenant


def test_a_creation_cancelled_as_the_local_lock_comes_to_it_stops(redis_url):
    """The client cancels (or its deadline ends) a CreateSweep waiting on the tenant's local lock
    just as the lock is handed to it. On Python 3.11, asyncio.wait_for returns the acquired lock
    and swallows the cancellation (CPython gh-86296): the creation went on for a caller that
    was gone. It must stop, holding nothing and leaving no per-tenant entry."""
    from pruning_server.sweeps import SweepServicer

    prefix = f"test-sweep-cancel-{uuid.uuid4().hex[:8]}"

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> tuple[bool, list[str], bool, int]:
        jobs = types.SimpleNamespace(store=store, settings=types.SimpleNamespace(retry_after_s=5.0))
        servicer = SweepServicer(jobs, sweep_store)  # type: ignore[arg-type]
        entered: list[str] = []
        holding, go = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with servicer._creating(TENANT):
                holding.set()
                await go.wait()

        async def waiter() -> None:
            async with servicer._creating(TENANT):
                entered.append("waiter")

        try:
            first = asyncio.create_task(holder())
            await holding.wait()
            second = asyncio.create_task(waiter())
            await asyncio.sleep(0.05)  # queued on the local lock
            lock = servicer._local_creations[TENANT][0]
            release = lock.release

            def release_then_cancel() -> None:
                release()
                second.cancel()  # the client goes as the lock is handed over

            lock.release = release_then_cancel  # type: ignore[method-assign]
            go.set()
            await first
            try:
                await second
                cancelled = False
            except asyncio.CancelledError:
                cancelled = True
            return cancelled, entered, lock.locked(), len(servicer._local_creations)
        finally:
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:*")] or [f"{prefix}:none"])

    cancelled, entered, locked, left = _with_stores(redis_url, prefix, work)
    assert cancelled and entered == [] and not locked and left == 0


def test_trials_above_a_sparsity_over_the_budget_are_cancelled_not_left_to_run(deployment, redis_url):
    """A list with a budget: once a sparsity is known to be over it, the trials still going
    above it cannot change the answer; the driver cancels them (a queued one at once, saying
    why; a running one through its worker) instead of letting them spend a worker."""
    server, prefix = deployment

    async def work(store: AsyncJobStore, sweep_store: SweepStore) -> tuple[str, list[str]]:
        spec = sweeps.with_defaults(
            pb.SweepSpec(sparsities=[0.5, 0.6, 0.7], parallel_trials=3, budget=pb.AccuracyBudget(max_loss_pp=1.0))
        )
        sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_RUNNING, spec=spec)
        ids = []
        for index, (sparsity, state) in enumerate(
            [(0.5, pb.JOB_STATE_RUNNING), (0.6, pb.JOB_STATE_QUEUED), (0.7, pb.JOB_STATE_RUNNING)]
        ):
            job, _ = await store.create(TENANT, pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED))
            if state == pb.JOB_STATE_RUNNING:
                await store.update(TENANT, job.id, lambda j: [state_event(j, pb.JOB_STATE_RUNNING)])
            sweep.trials.add(index=index, sparsity=sparsity, job_id=job.id, state=state)
            ids.append(job.id)
        await sweep_store.create(TENANT, sweep, "", "")
        return sweep.id, ids

    sweep_id, (low, queued, running) = _with_stores(redis_url, prefix, work)
    jobs = JobStore.from_url(redis_url, prefix)

    def over_budget(job: pb.Job) -> list[pb.JobEvent]:  # the worker ends 0.5 at 3 pp lost
        job.result.baseline.accuracy, job.result.pruned.accuracy = 0.98, 0.95
        return [state_event(job, pb.JOB_STATE_SUCCEEDED)]

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SweepServiceStub(channel)
        time.sleep(0.3)  # the driver has seen the sweep: nothing is over the budget yet
        assert [t.state for t in stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id)).trials] == [
            pb.JOB_STATE_RUNNING,
            pb.JOB_STATE_QUEUED,
            pb.JOB_STATE_RUNNING,
        ]
        jobs.update(low, over_budget)

        deadline = time.monotonic() + 10
        while (sweep := stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id))).trials[
            2
        ].state != pb.JOB_STATE_CANCELLING:
            assert time.monotonic() < deadline, f"trials stayed {[pb.JobState.Name(t.state) for t in sweep.trials]}"
            time.sleep(0.1)
        assert sweep.trials[1].state == pb.JOB_STATE_CANCELLED
        assert "went over the budget (0.5000)" in sweep.trials[1].error.message
        assert sweep.state == pb.JOB_STATE_RUNNING  # the running trial has yet to stop

        error = pb.JobError(code=code_pb2.CANCELLED, message="cancelled while running")
        jobs.update(running, lambda j: [state_event(j, pb.JOB_STATE_CANCELLED, error)])  # its worker stops
        deadline = time.monotonic() + 10
        while (sweep := stub.GetSweep(pb.GetSweepRequest(sweep_id=sweep_id))).state == pb.JOB_STATE_RUNNING:
            assert time.monotonic() < deadline, "the sweep did not end"
            time.sleep(0.1)
    assert sweep.state == pb.JOB_STATE_SUCCEEDED and not sweep.HasField("chosen_trial")
    assert "no sparsity tried keeps the accuracy budget" in sweep.message
    assert "2 cancelled above a sparsity over the budget" in sweep.message
