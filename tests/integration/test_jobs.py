"""Jobs through the real server, Redis and Celery worker process."""

from __future__ import annotations

import hashlib
import time

import grpc
import numpy as np
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import AlreadyExists, JobCancelled, constant_sparsity, job_spec, polynomial_decay

pytestmark = pytest.mark.integration
TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


def small_spec(client, files, **kwargs):
    model = client.upload_model(files["keras"])
    data = client.upload_dataset(files["data"])
    options = dict(schedule=constant_sparsity(0.5, frequency=5), epochs=2, batch_size=64, validation_split=0.1, seed=3)
    options.update(kwargs)
    return job_spec(model.id, dataset=data.id, **options)


def long_spec(client, files):
    model = client.upload_model(files["keras"])
    data = client.upload_dataset(files["big_data"])
    return job_spec(
        model.id, dataset=data.id, schedule=polynomial_decay(0.2, 0.6, frequency=10), epochs=200, batch_size=16
    )


def wait_for(predicate, timeout=60.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def test_full_small_job(client, worker, files, tmp_path):
    import models

    job = client.submit(small_spec(client, files, exports=("keras", "h5")), labels={"test": "full"})
    events = list(job.watch())

    ids = [tuple(map(int, e.id.split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    states = [e.state_change.to for e in events if e.WhichOneof("kind") == "state_change"]
    assert states == [pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED]
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[-2:] == ["result", "state_change"]
    progress = [e.progress for e in events if e.WhichOneof("kind") == "progress" and e.progress.phase == "fine_tune"]
    assert progress and progress[-1].step == progress[-1].total_steps == 2 * 15
    assert [p.step for p in progress] == sorted(p.step for p in progress)
    assert progress[-1].sparsity == pytest.approx(0.5)
    epochs = [e.log.message for e in events if e.WhichOneof("kind") == "log" and e.log.message.startswith("epoch ")]
    assert len(epochs) == 2 and "val_accuracy" in epochs[-1]

    result = job.result(timeout=10)
    assert result.pruned_kernel_sparsity == pytest.approx(0.5, abs=0.02)
    assert {l.name for l in result.layers if l.pruned} == {"conv", "hidden", "logits"}
    assert result.total_params > result.nonzero_params > 0
    assert result.size_before_gzip > 0 and result.size_after_gzip > 0
    assert result.compression_ratio == pytest.approx(result.size_before_gzip / result.size_after_gzip)
    # both saved the same way (no compile, optimizer or metric state): masking weights to zero
    # leaves a file's raw size as it was, and only its compressed size falls
    assert result.size_before_raw == result.size_after_raw
    assert 0.0 < result.pruned_accuracy <= 1.0 and result.device == "CPU"
    assert set(result.artifact_ids) == {"keras", "h5"}
    exports = {a.id: a.job_id for a in client.list_artifacts(kind="export")}
    assert {exports[a] for a in result.artifact_ids.values()} == {job.id}  # the listing names the job

    path = job.download(tmp_path)
    measured = models.weights_sparsity(path)
    for layer in result.layers:
        assert measured[layer.name] == pytest.approx(layer.sparsity, abs=1e-6)
    status = job.status()
    assert status.state == pb.JOB_STATE_SUCCEEDED and status.attempt == 1
    assert status.last_event_id == events[-1].id
    listed = list(client.list_jobs(labels={"test": "full"}))
    assert [j.id for j in listed] == [job.id]
    everything = [j.id for j in client.list_jobs()]
    assert [j.id for j in client.list_jobs(page_size=1)] == everything
    assert everything == sorted(everything, reverse=True)  # newest first
    assert job.id in [j.id for j in client.list_jobs(states=[pb.JOB_STATE_SUCCEEDED])]
    assert job.id not in [j.id for j in client.list_jobs(states=[pb.JOB_STATE_QUEUED])]


def test_watch_resumes_without_gap_or_duplicate(client, worker, files):
    job = client.submit(small_spec(client, files))
    first = []
    for event in client.watch_events(job.id):  # the stream is dropped after two events
        first.append(event)
        if len(first) == 2:
            break
    rest = list(job.watch(after_event_id=first[-1].id))
    replay = list(client.watch_events(job.id))
    assert [e.id for e in first + rest] == [e.id for e in replay]
    assert rest[-1].state_change.to == pb.JOB_STATE_SUCCEEDED


def test_cancel_queued_and_running_jobs(client, worker, files):
    running = client.submit(long_spec(client, files))
    wait_for(lambda: running.status().progress.phase == "fine_tune" and running.status().progress.step > 0, 120)
    queued = client.submit(small_spec(client, files))
    assert queued.status().state == pb.JOB_STATE_QUEUED

    assert queued.cancel().state == pb.JOB_STATE_CANCELLED
    asked = time.monotonic()
    assert running.cancel().state == pb.JOB_STATE_CANCELLING
    final = running.wait(timeout=60)
    assert final.state == pb.JOB_STATE_CANCELLED
    assert time.monotonic() - asked < 30
    assert final.progress.step < final.progress.total_steps
    with pytest.raises(JobCancelled):
        running.result()
    # It keeps what it measured before (its baseline, the time in each phase), no artifacts;
    # the queued one ran nothing and keeps nothing
    assert final.result.baseline.HasField("accuracy") and final.result.phase_seconds["fine_tune"] > 0
    assert not final.result.artifacts and not final.result.HasField("pruned")
    per_epoch = final.progress.total_steps // final.progress.total_epochs
    assert len(final.result.history) == final.progress.step // per_epoch  # the epochs it ran whole
    assert not queued.status().HasField("result")

    # The worker skips the cancelled queued job and goes on serving.
    after = client.submit(small_spec(client, files, epochs=1))
    assert after.result(timeout=120).pruned_kernel_sparsity > 0.4
    assert queued.status().state == pb.JOB_STATE_CANCELLED
    states = [e.state_change.to for e in client.watch_events(queued.id) if e.WhichOneof("kind") == "state_change"]
    assert states == [pb.JOB_STATE_QUEUED, pb.JOB_STATE_CANCELLED]


def test_create_job_is_idempotent(client, worker, files):
    spec = small_spec(client, files, epochs=1)
    first = client.submit(spec, idempotency_key="retry-1", labels={"test": "idem"})
    again = client.submit(spec, idempotency_key="retry-1", labels={"test": "idem"})
    other = client.submit(spec, idempotency_key="retry-2", labels={"test": "idem"})
    assert first.id == again.id != other.id
    with pytest.raises(AlreadyExists):  # same key, different request: a bug in the caller, not a retry
        client.submit(spec, idempotency_key="retry-1", labels={"test": "idem", "other": "label"})
    assert sorted(j.id for j in client.list_jobs(labels={"test": "idem"})) == sorted([first.id, other.id])
    assert first.result(timeout=120).pruned_kernel_sparsity > 0.4
    assert first.status().attempt == 1
    other.result(timeout=120)


def test_download_resumes_from_offset(client, files, tmp_path):
    artifact = client.upload_dataset(files["big_data"])
    whole = files["big_data"].read_bytes()
    assert artifact.id == hashlib.sha256(whole).hexdigest()

    offset = len(whole) // 3
    chunks = list(client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=offset)))
    assert chunks[0].offset == offset and chunks[0].total_size == len(whole)
    assert b"".join(c.data for c in chunks) == whole[offset:]

    dest = tmp_path / "data.npz"
    (tmp_path / f"data.npz.{artifact.id[:16]}.part").write_bytes(whole[:offset])
    assert client.download(artifact.id, dest).read_bytes() == whole
    assert not (tmp_path / f"data.npz.{artifact.id[:16]}.part").exists()

    with pytest.raises(grpc.RpcError) as error:
        list(client.stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=artifact.id, offset=len(whole) + 1)))
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_every_export_format(client, worker, files, tmp_path):
    import zipfile

    import numpy as np
    import tensorflow as tf

    job = client.submit(
        small_spec(client, files, epochs=1, exports=("keras", "h5", "saved_model", "tflite", "tflite_int8"))
    )
    result = job.result(timeout=300)
    assert list(result.artifact_ids) == ["keras", "h5", "saved_model", "tflite", "tflite_int8"]
    x = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)
    for fmt in ("tflite", "tflite_int8"):
        path = job.download(tmp_path, fmt=fmt)
        interpreter = tf.lite.Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        assert interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).shape == (1, 4)
    for name in ("saved_model", "saved_model.zip"):  # the format name, or the old name with its suffix
        saved = job.download(tmp_path / f"{name}.zip", fmt=name)
        assert "saved_model.pb" in zipfile.ZipFile(saved).namelist()
    sizes = {a.format: a.size for a in result.raw.artifacts}
    assert sizes["tflite_int8"] < sizes["tflite"]
    # Each TFLite file's own test accuracy: the float one scores what the Keras model scores.
    checked = {x.format: x for x in result.raw.export_accuracy}
    assert set(checked) == {"tflite", "tflite_int8"}
    assert checked["tflite"].samples == checked["tflite_int8"].samples > 0
    assert abs(checked["tflite"].accuracy - result.pruned_accuracy) <= 2 / checked["tflite"].samples


@pytest.mark.parametrize("variant", ["m_by_n", "block", "selection"])
def test_structured_pruning_and_layer_selection(client, worker, files, tmp_path, variant):
    import models

    spec = small_spec(client, files, epochs=1)
    if variant == "m_by_n":
        spec.pruning.sparsity_m_by_n.m, spec.pruning.sparsity_m_by_n.n = 2, 4
    elif variant == "block":
        spec.pruning.block_size[:] = [4, 1]
        spec.pruning.layers.exclude_types.append("Conv2D")
    else:
        spec.pruning.layers.include_names[:] = ["hidden"]
    job = client.submit(spec)
    result = job.result(timeout=300)
    pruned = {l.name: l for l in result.layers if l.pruned}
    if variant == "selection":
        assert set(pruned) == {"hidden"}
        assert {l.name: l.sparsity for l in result.layers}["logits"] == 0.0
    expected = {n: 0.5 for n in pruned}
    if variant == "m_by_n":
        expected["conv"] = 0.0  # 2:4 runs along input channels: the 1-channel conv stays dense
        assert any("conv" in e.log.message and "WARNING" == e.log.level for e in job.watch(after_event_id=""))
    assert {n: l.sparsity for n, l in pruned.items()} == pytest.approx(expected, abs=0.03)
    if variant == "m_by_n":
        import tf_keras as keras

        kernel = keras.models.load_model(job.download(tmp_path)).get_layer("hidden").kernel.numpy()
        groups = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1, 4)  # 4 consecutive input weights
        assert (np.count_nonzero(groups, axis=-1) <= 2).all()
    assert models.weights_sparsity(job.download(tmp_path / "again.keras"))["hidden"] == pytest.approx(
        pruned["hidden"].sparsity
    )
