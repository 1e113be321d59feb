"""Each bad input gets a precise status and leaves the system working."""
# The still_working fixture checks the "leaves the system working" half after every test.

from __future__ import annotations

import os
import zipfile

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pruning_client import (
    InvalidArgument,
    JobFailed,
    NotFound,
    ResourceExhausted,
    constant_sparsity,
    job_spec,
    polynomial_decay,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def ids(client, files):
    return {"model": client.upload_model(files["keras"]).id, "data": client.upload_dataset(files["data"]).id}


@pytest.fixture(autouse=True)
def still_working(client, files):
    """After each test: health is SERVING and a good upload and job creation still succeed."""
    yield
    stub = health_pb2_grpc.HealthStub(client._channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service="pruning.v1.PruningService")).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    assert len(client.upload_model(files["h5"]).id) == 64
    with pytest.raises(NotFound):
        client.get_job("f" * 24)


def fields(error) -> list[str]:
    return [f for f, _ in error.value.field_violations]


@pytest.mark.parametrize(
    "schedule, field",
    [
        (polynomial_decay(0.5, 1.2), "spec.pruning.schedule.polynomial_decay.final_sparsity"),
        (polynomial_decay(-0.1, 0.8), "spec.pruning.schedule.polynomial_decay.initial_sparsity"),
        (constant_sparsity(1.0), "spec.pruning.schedule.constant_sparsity.target_sparsity"),
    ],
)
def test_sparsity_outside_unit_interval(client, ids, schedule, field):
    with pytest.raises(InvalidArgument) as error:
        client.submit(job_spec(ids["model"], dataset=ids["data"], schedule=schedule))
    assert field in fields(error)


@pytest.mark.parametrize(
    "schedule, field",
    [
        (polynomial_decay(0.5, 0.8, begin_step=100, end_step=50), "spec.pruning.schedule.polynomial_decay.end_step"),
        (constant_sparsity(0.5, begin_step=10, end_step=10), "spec.pruning.schedule.constant_sparsity.end_step"),
    ],
)
def test_end_step_before_begin_step(client, ids, schedule, field):
    with pytest.raises(InvalidArgument) as error:
        client.submit(job_spec(ids["model"], dataset=ids["data"], schedule=schedule))
    assert fields(error) == [field]


def test_unknown_artifact_id(client, ids, tmp_path):
    unknown = "0" * 64
    with pytest.raises(NotFound):
        client.submit(job_spec(unknown, dataset=ids["data"]))
    with pytest.raises(NotFound):
        client.submit(job_spec(ids["model"], dataset=unknown))
    with pytest.raises(NotFound):
        client.download(unknown, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []  # no empty partial file: nothing to resume
    with pytest.raises(NotFound):
        client.get_job("0" * 24)


def test_non_model_file(client, tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("these are not the weights you are looking for\n" * 100)
    with pytest.raises(InvalidArgument) as error:
        client.upload_model(path)
    assert fields(error) == ["model"]
    archive = tmp_path / "archive.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "a zip, but no model")
    with pytest.raises(InvalidArgument):
        client.upload_model(archive)


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_truncated_model_file(client, files, tmp_path, kind):
    whole = files[kind].read_bytes()
    path = tmp_path / f"truncated.{kind}"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(InvalidArgument) as error:
        client.upload_model(path)
    assert fields(error) == ["model"]


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_lambda_layer_is_refused_unexecuted(client, tmp_path, suffix):
    import models

    marker = tmp_path / "lambda-ran"
    path = models.lambda_model(tmp_path / f"lambda{suffix}", marker)
    with pytest.raises(InvalidArgument) as error:
        client.upload_model(path)
    assert fields(error) == ["model"] and "Lambda" in error.value.message
    assert not marker.exists()


def test_every_refused_layer_comes_back_in_one_answer(client, tmp_path):
    """Two Lambda layers and a custom one: three field violations, each naming its layer, so
    the user fixes all three before the next upload."""
    import keras

    @keras.saving.register_keras_serializable(package="mine")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((4,))
    h = keras.layers.Lambda(lambda x: x + 1, name="plus_one")(inputs)
    h = Doubler(name="doubler")(keras.layers.Dense(4, name="dense")(h))
    outputs = keras.layers.Lambda(lambda x: x * 3, name="times_three")(h)
    keras.Model(inputs, outputs).save(tmp_path / "three.keras")
    with pytest.raises(InvalidArgument) as error:
        client.upload_model(tmp_path / "three.keras")
    violations = error.value.field_violations
    assert "model: the model has 3 refused layers" in error.value.message
    assert [f for f, _ in violations] == ["model"] * 3
    for name, (_, text) in zip(("plus_one", "doubler", "times_three"), violations, strict=True):
        assert repr(name) in text and text.endswith(("refused", "refused too)", "built-in layers"))


def test_dataset_shape_does_not_fit_model(client, files, ids):
    data = client.upload_dataset(files["wrong_shape"])
    with pytest.raises(InvalidArgument) as error:
        client.submit(job_spec(ids["model"], dataset=data.id))
    assert fields(error) == ["spec.dataset.artifact_id"]


def test_upload_over_size_limit(client, tmp_path, env):
    limit = int(env["PRUNING_MAX_UPLOAD_BYTES"])
    path = tmp_path / "huge.keras"
    path.write_bytes(os.urandom(limit + 1))
    with pytest.raises(ResourceExhausted):
        client.upload_model(path)
    from conftest import settings_for

    assert list(settings_for(env).artifacts_path.joinpath("tmp").glob("upload-*")) == []


@pytest.mark.parametrize("split", ["y_train", "y_test"])
def test_labels_out_of_range_fail_the_job_not_the_worker(client, worker, files, tmp_path, split):
    """Labels past the output units: integer labels are refused at CreateJob (their range is
    read at upload); float labels, whose range the upload does not read, fail the job
    INVALID_ARGUMENT before any step runs, the baseline evaluation (y_test) included, with the
    cause and no trace."""
    import numpy as np

    with np.load(files["data"]) as data:
        arrays = dict(data)
    arrays[split] = arrays[split] + 7  # classes 7..10 for a 4-way output
    np.savez(tmp_path / "ints.npz", **arrays)
    model = client.upload_model(files["keras"])
    with pytest.raises(InvalidArgument) as refused:
        client.submit(job_spec(model.id, dataset=client.upload_dataset(tmp_path / "ints.npz").id, epochs=1))
    assert "output units" in str(refused.value)
    arrays[split] = arrays[split].astype(np.float32)
    np.savez(tmp_path / "floats.npz", **arrays)
    job = client.submit(job_spec(model.id, dataset=client.upload_dataset(tmp_path / "floats.npz").id, epochs=1))
    with pytest.raises(JobFailed) as error:
        job.result(timeout=120)
    assert error.value.job_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    message = error.value.job.error.message
    assert split in message and "output units" in message and "Traceback" not in message
    good = client.submit(
        job_spec(
            model.id,
            dataset=client.upload_dataset(files["data"]).id,
            epochs=1,
            schedule=constant_sparsity(0.5, frequency=5),
        )
    )
    assert good.result(timeout=120).pruned_kernel_sparsity > 0.4


def test_unknown_layer_names_and_oversized_labels(client, ids):
    with pytest.raises(InvalidArgument) as error:
        client.submit(job_spec(ids["model"], dataset=ids["data"], include_layers=("hidden", "nope")))
    assert fields(error) == ["spec.pruning.layers.include_names"]
    with pytest.raises(InvalidArgument) as error:
        client.submit(job_spec(ids["model"], dataset=ids["data"]), labels={"k": "v" * 1000})
    assert fields(error) == ["labels[k]"]
    # NUL made {"a\0b": "c"} and {"a": "b\0c"} one request under one idempotency key
    for labels in ({"a\0b": "c"}, {"a": "b\0c"}, {"team": "vision\n"}):
        with pytest.raises(InvalidArgument) as error:
            client.submit(job_spec(ids["model"], dataset=ids["data"]), labels=labels)
        assert fields(error)[0].startswith("labels[") and "control characters" in str(error.value)


def test_block_sparsity_on_conv_layers(client, ids):
    with pytest.raises(InvalidArgument) as error:
        client.submit(job_spec(ids["model"], dataset=ids["data"], block_size=(1, 4)))
    assert fields(error) == ["spec.pruning.block_size"]


def test_corrupted_download_is_detected(client, files, tmp_path):
    from pruning_client import IntegrityError

    artifact = client.upload_dataset(files["data"])
    part = tmp_path / f"d.npz.{artifact.id[:16]}.part"
    part.write_bytes(b"\0" * 100)  # a stale partial file with the wrong bytes
    with pytest.raises(IntegrityError):
        client.download(artifact.id, tmp_path / "d.npz")
    assert not part.exists() and not (tmp_path / "d.npz").exists()
    assert client.download(artifact.id, tmp_path / "d.npz").read_bytes() == files["data"].read_bytes()


@pytest.mark.parametrize(
    "header, field",
    [
        ({"size": 10}, "model.header.size"),
        ({"sha256": "0" * 64}, "model.header.sha256"),
        (None, "model.header"),
    ],
)
def test_upload_header_is_checked(client, files, header, field):
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from pruning.v1 import pruning_pb2 as pb

    data = files["keras"].read_bytes()
    requests = [pb.UploadRequest(chunk=data)]
    if header is not None:
        requests.insert(0, pb.UploadRequest(header=pb.UploadHeader(filename="m.keras", **header)))
    with pytest.raises(grpc.RpcError) as error:
        client.stub.UploadModel(iter(requests))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    rpc_status.from_call(error.value).details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == [field]


def test_list_filters_are_bounded(client):
    """A ListJobs filter naming more labels than a job may carry, or more states than there
    are, is INVALID_ARGUMENT before any work (120,000 labels stalled the server's loop)."""
    from pruning.v1 import pruning_pb2 as pb

    def listed(request):
        return client.stub.ListJobs(request, metadata=client._metadata, timeout=30)

    with pytest.raises(grpc.RpcError) as error:
        listed(pb.ListJobsRequest(labels={f"k{i}": "v" for i in range(100_000)}))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        listed(pb.ListJobsRequest(states=[pb.JOB_STATE_QUEUED] * 1_000_000))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "states" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        listed(pb.ListJobsRequest(labels={"k": "v" * 1000}))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert listed(pb.ListJobsRequest(labels={f"k{i}": "v" for i in range(64)}, states=[1, 2, 3])).jobs == []
