"""The asyncio client against the real server, Redis and Celery worker process."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import InvalidArgument, NotFound, constant_sparsity, job_spec
from pruning_client.aio import AsyncClient

pytestmark = pytest.mark.integration


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_async_client_runs_a_job_and_downloads_its_exports(server, worker, files, tmp_path):
    async def run():
        async with AsyncClient(server.target, timeout=30) as client:
            await client.wait_ready(10)
            model = await client.upload_model(files["keras"])
            data = await client.upload_dataset(files["data"])
            spec = job_spec(
                model.id,
                dataset=data.id,
                schedule=constant_sparsity(0.5, frequency=5),
                epochs=2,
                batch_size=64,
                seed=3,
                exports=("keras", "h5"),
            )
            job = await client.submit(spec, labels={"test": "aio"})
            # result() follows the stream on its own while watch() follows it beside it.
            result_task = asyncio.create_task(job.result(timeout=300))
            events = [e async for e in job.watch()]
            result = await result_task
            done = await job.done()
            record = await job.status()
            model_path = await job.download(tmp_path)
            h5_path = await job.download(tmp_path / "model.h5", fmt="h5")
            every = await job.download_all(tmp_path / "all")
            kept: list[tuple[int, int]] = []  # the file already holds it: no download, all at once
            pruned = (await job.result()).raw.artifacts[0]
            await client.download(pruned.id, model_path, progress=lambda n, total: kept.append((n, total)))
            assert kept == [(pruned.size, pruned.size)]
            listed = [j.id async for j in client.list_jobs(labels={"test": "aio"}, page_size=1)]
            replay = [e.id async for e in client.watch_events(job.id)]
            return job, events, result, done, record, model_path, h5_path, every, listed, replay

    job, events, result, done, record, model_path, h5_path, every, listed, replay = asyncio.run(run())

    states = [e.state_change.to for e in events if e.WhichOneof("kind") == "state_change"]
    assert states == [pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED]
    assert [e.id for e in events] == replay
    assert done and record.state == pb.JOB_STATE_SUCCEEDED and record.last_event_id == events[-1].id
    # Unset training parameters took the server's defaults; the given ones were kept.
    assert record.spec.training.validation_split == pytest.approx(0.1) and record.spec.training.batch_size == 64

    assert result.pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
    assert set(result.artifact_ids) == {"keras", "h5"}
    assert model_path == tmp_path / f"pruned-{job.id}.keras"
    assert sha256(model_path) == result.model_artifact_id == result.raw.artifacts[0].sha256
    assert sha256(h5_path) == result.artifact_ids["h5"]
    assert [p.name for p in every] == [f"pruned-{job.id}.keras", f"pruned-{job.id}.h5"]
    assert [sha256(p) for p in every] == list(result.artifact_ids.values())  # the exports, not the report
    assert not list(tmp_path.rglob("*.part"))
    assert listed == [job.id]


def test_async_client_maps_errors_and_keeps_the_original(server, tmp_path):
    async def run():
        async with AsyncClient(server.target, timeout=30) as client:
            with pytest.raises(NotFound):
                await client.download("0" * 64, tmp_path / "x")
            assert list(tmp_path.iterdir()) == []  # no empty partial file: nothing to resume
            with pytest.raises(NotFound) as missing:
                await client.get_job("0" * 24)
            spec = job_spec("ab" * 32, schedule=constant_sparsity(1.5))
            with pytest.raises(InvalidArgument) as invalid:
                await client.submit(spec)
            return missing.value, invalid.value

    missing, invalid = asyncio.run(run())
    assert isinstance(missing.rpc_error, grpc.aio.AioRpcError) and missing.__cause__ is missing.rpc_error
    assert missing.code == grpc.StatusCode.NOT_FOUND and missing.details
    fields = [f for f, _ in invalid.field_violations]
    assert "spec.pruning.schedule.constant_sparsity.target_sparsity" in fields
