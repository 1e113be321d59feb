"""DeleteArtifact: a tenant deletes its own record of an artifact (SDK, asyncio SDK, CLI);
another tenant's record of the same bytes stays; unknown and other tenants' ids are
NOT_FOUND, malformed ones INVALID_ARGUMENT; the bytes go at the housekeeping once no record
points to them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from hostile import hostile_server, keras_bytes

from pruning_client import AsyncClient, Client, InvalidArgument, NotFound

pytestmark = pytest.mark.integration


def test_a_tenant_deletes_its_record_and_no_one_elses(env, tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(keras_bytes())
    prefix = f"{env['PRUNING_KEY_PREFIX']}:delete"
    # its own artifact directory: the housekeeping below judges the blobs as this deployment's
    server = hostile_server(env, "delete", key_prefix=prefix, sweep_min_age_s=0, artifact_dir=str(tmp_path / "a"))
    try:
        with Client(server.target, api_key="key-a", timeout=30) as a, Client(server.target, api_key="key-b") as b:
            mine, theirs = a.upload_model(model), b.upload_model(model)
            assert mine.id == theirs.id
            # Make the blob older than the job store's birth, as one kept from before a Redis
            # that lost its data: the housekeeping keeps such blobs, unless a delete released them.
            store = server.running.store
            asyncio.run_coroutine_threadsafe(
                store.redis.set(store.keys.born(), repr(time.time() + 1)), server.loop
            ).result(10)
            assert a.delete_artifact(mine.id).filename == "m.keras"
            with pytest.raises(NotFound):
                a.download(mine.id, tmp_path / "gone.keras")
            with pytest.raises(NotFound):
                a.delete_artifact(mine.id)  # twice: not this tenant's any more
            assert b.download(theirs.id, tmp_path / "kept.keras").read_bytes() == model.read_bytes()
            with pytest.raises(InvalidArgument):
                a.delete_artifact("not-an-id")

            async def aio() -> str:
                async with AsyncClient(server.target, api_key="key-b", timeout=30) as client:
                    return (await client.delete_artifact(theirs.id)).id

            assert asyncio.run(aio()) == theirs.id
            # No record points to the bytes now: the housekeeping removes them.
            from pruning_core.objectstore import open_store
            from pruning_server.reaper import enforce_retention

            blobs = open_store(server.settings)
            assert blobs.exists(mine.id)
            counts = asyncio.run_coroutine_threadsafe(
                enforce_retention(server.running.store, blobs, server.settings), server.loop
            ).result(30)
            assert not blobs.exists(mine.id) and counts["blobs"] >= 1
            env_cli = {**os.environ, "PRUNING_TARGET": server.target, "PRUNING_API_KEY": "key-a"}
            again = a.upload_model(model)
            cli = os.path.join(os.path.dirname(sys.executable), "pruning")
            done = subprocess.run([cli, "delete", again.id], capture_output=True, text=True, env=env_cli, timeout=60)
            assert done.returncode == 0 and done.stdout.strip() == f"deleted {again.id} (m.keras)", done.stderr
            gone = subprocess.run([cli, "delete", again.id], capture_output=True, text=True, env=env_cli, timeout=60)
            assert gone.returncode == 3, gone.stderr
    finally:
        server.stop()


def test_an_artifact_a_queued_job_reads_is_not_deleted_until_the_job_ends(env, tmp_path):
    """DeleteArtifact of a job's model while the job is queued (no worker reads this queue):
    FAILED_PRECONDITION naming the job, in the SDK and the CLI (exit 6); once it is cancelled,
    the delete goes through."""
    from hostile import npz_bytes

    from pruning_client import FailedPrecondition, job_spec

    model, data = tmp_path / "m.keras", tmp_path / "d.npz"
    model.write_bytes(keras_bytes())
    data.write_bytes(npz_bytes(seed=3))
    server = hostile_server(env, "pinned", key_prefix=f"{env['PRUNING_KEY_PREFIX']}:pinned")
    try:
        with Client(server.target, api_key="key-a", timeout=30) as a:
            uploaded, dataset = a.upload_model(model), a.upload_dataset(data)
            job = a.submit(job_spec(uploaded.id, dataset=dataset.id))
            with pytest.raises(FailedPrecondition) as refused:
                a.delete_artifact(uploaded.id)
            assert f"artifact_id: job {job.id} reads this artifact and has not ended" in str(refused.value)
            env_cli = {**os.environ, "PRUNING_TARGET": server.target, "PRUNING_API_KEY": "key-a"}
            cli = os.path.join(os.path.dirname(sys.executable), "pruning")
            done = subprocess.run([cli, "delete", dataset.id], capture_output=True, text=True, env=env_cli, timeout=60)
            assert done.returncode == 6 and f"job {job.id} reads this artifact" in done.stderr, done.stderr
            a.cancel_job(job.id)
            assert a.delete_artifact(uploaded.id).id == uploaded.id
            assert a.delete_artifact(dataset.id).id == dataset.id
    finally:
        server.stop()
