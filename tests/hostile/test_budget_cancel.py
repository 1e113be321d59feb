"""A job with an accuracy budget cancelled while CreateJob is still creating its search: the
cancel is not acknowledged and then forgotten (the search ran on, the job went RUNNING); the
job ends CANCELLED, the search is cancelled with it, and a retry of the CreateJob starts none."""

from __future__ import annotations

import threading

import pytest
from hostile import hostile_server, tiny  # noqa: F401 - fixture

from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, accuracy_budget, job_spec
from pruning_server import sweeps as server_sweeps

pytestmark = pytest.mark.integration


def test_a_budget_job_cancelled_before_its_search_exists_stays_cancelled(env, tiny, monkeypatch):  # noqa: F811
    entered, gate = threading.Event(), threading.Event()
    start = server_sweeps.SweepServicer._start

    async def held_start(self, tenant, sweep, idempotency_key, fingerprint):
        if idempotency_key.startswith("search-for-job-") and not gate.is_set():
            entered.set()
            while not gate.is_set():  # CreateJob paused between the job's record and its search
                await server_sweeps.asyncio.sleep(0.01)
        return await start(self, tenant, sweep, idempotency_key, fingerprint)

    monkeypatch.setattr(server_sweeps.SweepServicer, "_start", held_start)
    server = hostile_server(
        env, "budget-cancel", key_prefix=f"{env['PRUNING_KEY_PREFIX']}:budget-cancel"
    )  # its own jobs only
    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            spec = job_spec(client.upload_model(tiny["keras"]).id, dataset=client.upload_dataset(tiny["data"]).id)
            spec.budget.CopyFrom(accuracy_budget(max_loss_pp=1.0))
            created: dict[str, pb.Job] = {}
            submit = threading.Thread(
                target=lambda: created.setdefault("job", client.submit(spec, idempotency_key="once").status())
            )
            submit.start()
            assert entered.wait(30)
            (job,) = list(client.list_jobs())
            cancelled = client.cancel_job(job.id)
            assert cancelled.state == pb.JOB_STATE_CANCELLED  # not QUEUED, then forgotten
            gate.set()
            submit.join(30)
            assert created["job"].state == pb.JOB_STATE_CANCELLED
            sweep = client.get_sweep(job.search_sweep_id)  # made by the paused CreateJob, then cancelled
            assert sweep.state == pb.JOB_STATE_CANCELLED
            assert all(t.state == pb.JOB_STATE_CANCELLED for t in sweep.trials)
            again = client.submit(spec, idempotency_key="once").status()  # a retry starts nothing
            assert again.id == job.id and again.state == pb.JOB_STATE_CANCELLED
            assert client.get_sweep(job.search_sweep_id).version == sweep.version
            assert client.get_job(job.id).state == pb.JOB_STATE_CANCELLED
    finally:
        gate.set()
        server.stop()
