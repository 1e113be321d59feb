"""A successive-halving template whose explicit schedule steps fit its own
epochs but not rung 0's is refused at CreateSweep (each rung-0 trial was refused at CreateJob
and the sweep FAILED); a trial CreateJob refuses keeps the refusal's code (it was 0, OK)."""

from __future__ import annotations

import types
import uuid

import grpc
import pytest
from google.rpc import code_pb2

from conftest import ServerThread, settings_for
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, InvalidArgument, job_spec, polynomial_decay, sweep_spec
from pruning_core import sweeps
from pruning_core.store import AsyncJobStore
from pruning_core.sweeps import SweepStore
from pruning_server.errors import Failure
from pruning_server.sweeps import advance

pytestmark = pytest.mark.integration


@pytest.fixture
def sweep_server(env):
    prefix = f"{env['PRUNING_KEY_PREFIX']}:sweep-edges-{uuid.uuid4().hex[:8]}"
    server = ServerThread(settings_for(env, key_prefix=prefix, queue=f"{env['PRUNING_QUEUE']}-sweep-edges"))
    yield server
    server.stop()


def test_a_halving_template_whose_end_step_rung_0_cannot_reach_is_refused(sweep_server, files):
    with Client(sweep_server.target, timeout=30) as client:
        model = client.upload_model(files["keras"]).id
        data = client.upload_dataset(files["data"]).id
        # 1024 samples, 0.1 validation, batch 64: 15 steps an epoch, 45 in 3 epochs; rung 0 runs 1
        base = job_spec(model, dataset=data, schedule=polynomial_decay(0.0, 0.5, end_step=40), epochs=3, batch_size=64)
        client.validate(base)  # the template alone is valid
        spec = sweep_spec(base, max_loss_pp=3.0, method="successive_halving", max_trials=4)
        with pytest.raises(InvalidArgument) as refused:
            client.create_sweep(spec)
    assert "spec.base.pruning.schedule.polynomial_decay.end_step" in str(refused.value)


def test_a_trial_createjob_refuses_keeps_the_refusals_code(redis_url):
    import asyncio

    prefix = f"test-sweep-edges-{uuid.uuid4().hex[:8]}"

    async def work() -> pb.Sweep:
        store = AsyncJobStore.from_url(redis_url, prefix)
        sweep_store = SweepStore(store.redis, prefix)
        try:
            spec = sweeps.with_defaults(pb.SweepSpec(sparsities=[0.5]))
            sweep = pb.Sweep(id=sweeps.new_sweep_id(), state=pb.JOB_STATE_QUEUED, spec=spec)
            await sweep_store.create("default", sweep, "", "")

            async def create_job(tenant, request, sweep_id="", max_active=None):
                raise Failure(grpc.StatusCode.INVALID_ARGUMENT, "spec.pruning.schedule.polynomial_decay.end_step: no")

            jobs = types.SimpleNamespace(
                store=store, create_job=create_job, settings=types.SimpleNamespace(max_active_jobs_per_tenant=0)
            )
            return await advance(jobs, sweep_store, sweep.id)
        finally:
            await store.redis.delete(*[k async for k in store.redis.scan_iter(f"{prefix}:*")])
            await store.redis.aclose()

    done = asyncio.run(work())
    assert done.state == pb.JOB_STATE_FAILED
    assert done.trials[0].error.code == code_pb2.INVALID_ARGUMENT
