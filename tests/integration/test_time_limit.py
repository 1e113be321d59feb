"""A job past the configured time limit fails with DEADLINE_EXCEEDED, keeping what it measured
before (its baseline, the seconds per phase); the worker goes on."""

from __future__ import annotations

import grpc
import pytest

from conftest import ServerThread, settings_for, start_worker, stop_worker
from pruning_client import Client, JobFailed, constant_sparsity, job_spec
from pruning_client.report import job_report

pytestmark = pytest.mark.integration


def test_job_time_limit(env, files, tmp_path):
    limited = {**env, "PRUNING_QUEUE": env["PRUNING_QUEUE"] + "-limit", "PRUNING_JOB_TIME_LIMIT_S": "16"}
    server = ServerThread(settings_for(limited))
    worker = start_worker(limited, tmp_path / "worker.log")
    try:
        with Client(server.target) as client:
            model = client.upload_model(files["keras"])
            big = client.upload_dataset(files["big_data"])
            spec = job_spec(model.id, dataset=big.id, epochs=200, batch_size=16)
            (warning,) = client.validate(spec).warnings  # the dry run says so first
            assert "is over this service's PRUNING_JOB_TIME_LIMIT_S (16 s)" in warning
            slow = client.submit(spec)
            with pytest.raises(JobFailed) as error:
                slow.result(timeout=120)
            assert error.value.job_code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            job = error.value.job
            assert job.finished_at.ToSeconds() - job.started_at.ToSeconds() < 40
            # What it measured before it ran out of time is kept, and said to be no more
            kept = client.get_job(job.id).result
            assert kept.baseline.HasField("accuracy") and kept.size_before.gzip_bytes > 0
            assert kept.phase_seconds["fine_tune"] > 4 and kept.phase_seconds["baseline"] > 0
            assert not kept.HasField("pruned") and not kept.artifacts
            markdown, _ = job_report(client.get_job(job.id))
            assert f"| test accuracy | {kept.baseline.accuracy:.4f} | n/a |" in markdown
            # the job's own limit, under the service's: the lower applies, and is named
            spec.time_limit_s = 5
            (warning,) = client.validate(spec).warnings
            assert "is over the job's time_limit_s (5 s)" in warning
            with pytest.raises(JobFailed) as error:
                client.submit(spec).result(timeout=120)
            job = error.value.job
            assert error.value.job_code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            assert "time limit of 5 s (the job's time_limit_s)" in job.error.message
            assert job.finished_at.ToSeconds() - job.started_at.ToSeconds() < 14  # not the service's 16 s
            small = client.upload_dataset(files["data"])
            quick_spec = job_spec(
                model.id, dataset=small.id, epochs=1, schedule=constant_sparsity(0.5, frequency=5), report=False
            )
            assert client.validate(quick_spec).warnings == []  # within it
            quick = client.submit(quick_spec)
            assert quick.result(timeout=120).pruned_kernel_sparsity > 0.4
    finally:
        stop_worker(worker)
        server.stop()
