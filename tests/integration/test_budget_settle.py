"""How a job with a budget follows its search sweep (server.sweeps.settle) on a real Redis:
RUNNING with the first trials, a line and a progress event per trial that ends, then the
picked trial's result, FAILED (FAILED_PRECONDITION, the sweep's reason) when no trial kept the
budget, or CANCELLED with the sweep. Nothing here needs a worker: trials are written as a
worker would leave them."""

from __future__ import annotations

import asyncio
import types
import uuid

import pytest
import redis
from google.rpc import code_pb2

from pruning.v1 import pruning_pb2 as pb
from pruning_core import sweeps
from pruning_core.store import AsyncJobStore, new_job_id
from pruning_server.sweeps import settle

pytestmark = pytest.mark.integration
TENANT = "t"


@pytest.fixture
def store(redis_url):
    """Makes the store inside the test's own event loop (its connections belong to one)."""
    prefix = f"test-settle-{uuid.uuid4().hex[:8]}"
    yield lambda: AsyncJobStore.from_url(redis_url, prefix)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def _trial(index: int, sparsity: float, loss_pp: float | None, state=pb.JOB_STATE_SUCCEEDED) -> pb.Trial:
    t = pb.Trial(index=index, sparsity=sparsity, state=state, job_id=new_job_id())
    t.finished_at.FromNanoseconds(1_000_000_000 * (index + 1))
    if loss_pp is not None:
        t.baseline_accuracy, t.pruned_accuracy, t.accuracy_loss_pp = 0.98, 0.98 - loss_pp / 100, loss_pp
    else:
        t.error.message = "the pruned model's test loss is nan"
    t.within_budget = sweeps.within_budget(t, pb.AccuracyBudget(max_loss_pp=0.5))
    return t


async def _parent(store: AsyncJobStore) -> pb.Job:
    job = pb.Job(id=new_job_id(), state=pb.JOB_STATE_QUEUED, search_sweep_id="a" * 24)
    job.spec.budget.max_loss_pp = 0.5
    created, _ = await store.create(TENANT, job)
    return created


def _sweep(job: pb.Job, state, trials: list[pb.Trial]) -> pb.Sweep:
    spec = sweeps.with_defaults(pb.SweepSpec(budget=pb.AccuracyBudget(max_loss_pp=0.5)))
    sweep = pb.Sweep(id=job.search_sweep_id, state=state, spec=spec, job_id=job.id, trials=trials)
    if state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED):
        index = sweeps.chosen(sweep)
        if index is not None:
            sweep.chosen_trial, sweep.chosen_job_id = index, trials[index].job_id
        sweep.message = sweeps.conclusion(sweep)
    return sweep


def test_the_job_runs_tells_each_trial_and_ends_with_the_picked_trials_result(store):
    make = store

    async def run():
        store = make()
        job = await _parent(store)
        jobs = types.SimpleNamespace(store=store)
        trials = [_trial(0, 0.5, 0.1), _trial(1, 0.95, 3.0)]
        await settle(jobs, TENANT, _sweep(job, pb.JOB_STATE_RUNNING, [*trials[:1], pb.Trial(index=1, sparsity=0.95)]))
        running = await store.get(TENANT, job.id)
        assert running.state == pb.JOB_STATE_RUNNING and running.progress.step == 1
        version = await store.redis.hget(store.keys.job(job.id), "version")
        await settle(jobs, TENANT, _sweep(job, pb.JOB_STATE_RUNNING, [*trials[:1], pb.Trial(index=1, sparsity=0.95)]))
        # the same sweep again: nothing new for the job, so nothing written
        assert await store.redis.hget(store.keys.job(job.id), "version") == version
        # the picked trial's job, as a worker leaves it
        picked = pb.Job(id=trials[0].job_id, state=pb.JOB_STATE_QUEUED)
        picked.spec.pruning.schedule.polynomial_decay.final_sparsity = 0.5  # the sparsity it ran at
        picked.spec.pruning.schedule.polynomial_decay.end_step = 420
        await store.create(TENANT, picked)
        picked.result.pruned_kernel_sparsity = 0.5
        picked.result.artifacts.add(id="b" * 64, format="keras")

        def succeed(j: pb.Job):
            j.state = pb.JOB_STATE_SUCCEEDED
            j.result.CopyFrom(picked.result)
            return []

        await store.update(TENANT, picked.id, succeed)
        await settle(jobs, TENANT, _sweep(job, pb.JOB_STATE_SUCCEEDED, trials))
        return await store.get(TENANT, job.id), await store.read_events(job.id, "", None)

    done, events = asyncio.run(run())
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.result.pruned_kernel_sparsity == 0.5
    # The job's spec says what ran (the searched sparsity), not the template's 0.8.
    decay = done.spec.pruning.schedule.polynomial_decay
    assert decay.final_sparsity == 0.5 and decay.end_step == 420
    assert done.spec.budget.max_loss_pp == 0.5
    assert [a.id for a in done.result.artifacts] == ["b" * 64]
    lines = [e.log.message for e in events if e.WhichOneof("kind") == "log"]
    assert len(lines) == 2  # one per trial, each told once although settle ran three times
    assert "0.5000" in lines[0] and "within the budget" in lines[0] and "over the budget" in lines[1]
    assert [e.state_change.to for e in events if e.WhichOneof("kind") == "state_change"][-2:] == [
        pb.JOB_STATE_RUNNING,
        pb.JOB_STATE_SUCCEEDED,
    ]


def test_no_trial_within_the_budget_fails_the_job_with_the_reason(store):
    make = store

    async def run():
        store = make()
        job = await _parent(store)
        trials = [_trial(0, 0.5, 2.0), _trial(1, 0.95, None, pb.JOB_STATE_FAILED)]
        await settle(types.SimpleNamespace(store=store), TENANT, _sweep(job, pb.JOB_STATE_SUCCEEDED, trials))
        return await store.get(TENANT, job.id)

    done = asyncio.run(run())
    assert done.state == pb.JOB_STATE_FAILED and not done.HasField("result")
    assert done.error.code == code_pb2.FAILED_PRECONDITION
    assert "no sparsity tried keeps the accuracy budget" in done.error.message


def test_a_search_whose_every_trial_failed_fails_the_job_with_the_trials_code(store):
    """A broken model fails every trial with INVALID_ARGUMENT: the job says so, with the first
    trial's error, not "no sparsity keeps the budget" (FAILED_PRECONDITION)."""
    make = store

    async def run():
        store = make()
        job = await _parent(store)
        trials = [_trial(i, s, None, pb.JOB_STATE_FAILED) for i, s in enumerate((0.5, 0.95))]
        for t in trials:
            t.error.code, t.error.message = code_pb2.INVALID_ARGUMENT, "model: cannot be loaded: broken"
        await settle(types.SimpleNamespace(store=store), TENANT, _sweep(job, pb.JOB_STATE_FAILED, trials))
        return await store.get(TENANT, job.id)

    done = asyncio.run(run())
    assert done.state == pb.JOB_STATE_FAILED and done.error.code == code_pb2.INVALID_ARGUMENT
    assert done.error.message.startswith("no trial succeeded (2 failed); trial 0")
    assert done.error.message.endswith("model: cannot be loaded: broken")


def test_a_cancelled_search_cancels_the_job_and_an_ended_job_never_changes(store):
    make = store

    async def run():
        store = make()
        job = await _parent(store)
        jobs = types.SimpleNamespace(store=store)
        await settle(jobs, TENANT, _sweep(job, pb.JOB_STATE_CANCELLED, []))
        cancelled = await store.get(TENANT, job.id)
        await settle(jobs, TENANT, _sweep(job, pb.JOB_STATE_SUCCEEDED, [_trial(0, 0.5, 0.1)]))
        return cancelled, await store.get(TENANT, job.id)

    cancelled, later = asyncio.run(run())
    assert cancelled.state == pb.JOB_STATE_CANCELLED and cancelled.error.code == code_pb2.CANCELLED
    assert later == cancelled
