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


def test_an_upload_refused_early_says_the_servers_status_every_time(server, tmp_path):
    """Refused at its header (over the upload limit) while the client still sends: grpc.aio
    would turn the answer into INTERNAL about half the time."""
    from pruning_client import ResourceExhausted

    big = tmp_path / "big.npz"
    big.write_bytes(b"\0" * (server.settings.max_upload_bytes + (4 << 20)))

    async def run():
        async with AsyncClient(server.target, timeout=30) as client:
            codes = []
            for hash_first in (True, False) * 6:
                client.options.hash_first = hash_first
                try:
                    await client.upload_dataset(big)
                except ResourceExhausted as refused:
                    codes.append(refused.code)
                    assert "over the upload limit" in refused.details
            return codes

    assert asyncio.run(run()) == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 12


def test_a_cancelled_async_upload_cancels_its_call(server, tmp_path):
    import os
    import time

    from conftest import wait_for

    data = tmp_path / "slow.npz"
    data.write_bytes(os.urandom(12 << 20))
    sha = hashlib.sha256(data.read_bytes()).hexdigest()

    async def run():
        async with AsyncClient(server.target, timeout=30, hash_first=False) as client:
            loop = asyncio.get_running_loop()
            started = asyncio.Event()

            def progress(_: int) -> None:  # in the reader thread: slows the upload down
                loop.call_soon_threadsafe(started.set)
                time.sleep(0.05)

            task = asyncio.create_task(client.upload_dataset(data, progress=progress))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return [a.id async for a in client.list_artifacts(kind="dataset")]

    assert sha not in asyncio.run(run())
    tmp = server.settings.artifacts_path / "tmp"
    wait_for(lambda: not list(tmp.glob("upload-*")), 10, "the dropped upload's file removed")


def test_a_download_cancelled_twice_returns_once_its_file_is_still(server, tmp_path, monkeypatch):
    """However often the task is cancelled, it ends once its writer has written what it was
    given: a resume right after never races a writer still extending the partial file."""
    import time

    import models
    from pruning.files import DirectWriter

    data = models.dataset(tmp_path / "d.npz", n_train=2600, n_test=16, shape=(28, 28))  # 8 MiB
    real_write = DirectWriter.write

    def slow_write(self, chunk):  # a slow disk
        time.sleep(0.1)
        return real_write(self, chunk)

    async def run():
        async with AsyncClient(server.target, timeout=30) as client:
            artifact = await client.upload_dataset(data)
            monkeypatch.setattr(DirectWriter, "write", slow_write)
            loop = asyncio.get_running_loop()
            started = asyncio.Event()
            dest = tmp_path / "back.npz"
            task = asyncio.create_task(
                client.download(artifact.id, dest, progress=lambda n, total: loop.call_soon_threadsafe(started.set))
            )
            await started.wait()
            task.cancel()
            await asyncio.sleep(0.05)
            task.cancel()  # again, while the file is being finished
            with pytest.raises(asyncio.CancelledError):
                await task
            part = next(tmp_path.glob("back.npz.*.part"))
            size = part.stat().st_size
            await asyncio.sleep(0.5)
            assert part.stat().st_size == size  # still: nothing writes it any more
            monkeypatch.setattr(DirectWriter, "write", real_write)
            await client.download(artifact.id, dest)  # resumed
            return hashlib.sha256(dest.read_bytes()).hexdigest() == artifact.id

    assert asyncio.run(run())


def test_a_download_cancelled_after_its_last_chunk_keeps_every_byte(server, tmp_path, monkeypatch):
    """Cancelled while its writer finishes (every chunk received): the partial file holds all
    of it once the task ends, never an empty file a retry would drop."""
    import time

    import models
    from pruning.files import DirectWriter

    data = models.dataset(tmp_path / "d.npz", n_train=2600, n_test=16, shape=(28, 28))  # 8 MiB
    real_write = DirectWriter.write

    def slow_write(self, chunk):
        time.sleep(0.1)
        return real_write(self, chunk)

    async def run():
        async with AsyncClient(server.target, timeout=30) as client:
            artifact = await client.upload_dataset(data)
            monkeypatch.setattr(DirectWriter, "write", slow_write)
            loop = asyncio.get_running_loop()
            all_in = asyncio.Event()
            seen = [0]

            def progress(n: int, total: int) -> None:
                seen[0] += n
                if seen[0] == total:
                    loop.call_soon_threadsafe(all_in.set)

            dest = tmp_path / "back.npz"
            task = asyncio.create_task(client.download(artifact.id, dest, progress=progress))
            await all_in.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            parts = list(tmp_path.glob("back.npz.*.part"))
            if dest.exists():  # the cancel came after the file was moved into place
                assert not parts
            else:
                assert len(parts) == 1 and parts[0].stat().st_size == artifact.size
            monkeypatch.setattr(DirectWriter, "write", real_write)
            await client.download(artifact.id, dest)
            return hashlib.sha256(dest.read_bytes()).hexdigest() == artifact.id

    assert asyncio.run(run())
