"""Sweeps through the asyncio client against the real server, Redis and Celery worker: a small
curve followed to its end and listed, and a cancel."""

from __future__ import annotations

import asyncio

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import JobCancelled, constant_sparsity, job_spec, sweep_spec
from pruning_client.aio import AsyncClient

pytestmark = pytest.mark.integration


async def _base(client: AsyncClient, files: dict, epochs: int) -> pb.JobSpec:
    model = await client.upload_model(files["keras"])
    data = await client.upload_dataset(files["data"])
    return job_spec(
        model.id,
        dataset=data.id,
        schedule=constant_sparsity(0.5, frequency=5),
        epochs=epochs,
        batch_size=64,
        seed=3,
        report=False,
    )


def test_async_client_runs_a_sweep_to_its_end_and_lists_it(server, worker, files):
    async def run():
        async with AsyncClient(server.target, timeout=30) as client:
            spec = sweep_spec(await _base(client, files, epochs=1), sparsities=[0.5, 0.8], parallel_trials=1)
            sweep = await client.create_sweep(spec, labels={"test": "aio-sweep"})
            # result() follows the stream on its own while watch() follows it beside it.
            result_task = asyncio.create_task(sweep.result(timeout=300))
            snapshots = [s async for s in sweep.watch()]
            done = await result_task
            listed = [s.id async for s in client.list_sweeps(state=pb.JOB_STATE_SUCCEEDED, page_size=1)]
            again = await client.sweep(sweep.id).get()
            return sweep, snapshots, done, listed, again

    sweep, snapshots, done, listed, again = asyncio.run(run())

    assert done.state == pb.JOB_STATE_SUCCEEDED and done == again and sweep.last == done
    assert sorted(t.sparsity for t in done.trials) == [0.5, 0.8]
    assert all(t.state == pb.JOB_STATE_SUCCEEDED and t.gzip_bytes > 0 for t in done.trials)
    assert not done.HasField("chosen_trial")  # no budget, no answer
    versions = [s.version for s in snapshots]
    assert versions == sorted(set(versions)) and snapshots[-1] == done
    assert sweep.id in listed


def test_async_client_cancels_a_sweep_and_its_trials(server, worker, files):
    async def run():
        async with AsyncClient(server.target, timeout=30) as client:
            spec = sweep_spec(await _base(client, files, epochs=50), sparsities=[0.6, 0.8], parallel_trials=1)
            sweep = await client.create_sweep(spec)
            cancelled = await sweep.cancel()
            with pytest.raises(JobCancelled):
                await sweep.result(timeout=60)
            for t in cancelled.trials:
                with pytest.raises(JobCancelled):
                    await client.job(t.job_id).result(timeout=120)
            return cancelled, await client.get_sweep(sweep.id)

    cancelled, after = asyncio.run(run())
    assert cancelled.state == pb.JOB_STATE_CANCELLED == after.state
    assert len(after.trials) == len(cancelled.trials)  # nothing queued after the cancel
