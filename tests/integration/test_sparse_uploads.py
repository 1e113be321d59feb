"""A model that comes with zeros of its own (pruned before, or units no gradient reaches)
ends sparser than the job's target: the job succeeds and says why, instead of failing with
advice about the schedule's end step."""

from __future__ import annotations

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import constant_sparsity, job_spec

pytestmark = pytest.mark.integration


def _with_dead_units(source, path, dead: int):
    """``source``'s model with ``dead`` of its hidden units cut off: their incoming weights,
    bias and outgoing weights zero, so ReLU passes them no gradient and fine-tuning keeps them
    zero."""
    import tf_keras as keras

    model = keras.models.load_model(source)
    hidden, logits = model.get_layer("hidden"), model.get_layer("logits")
    kernel, bias = hidden.get_weights()
    kernel[:, :dead], bias[:dead] = 0.0, 0.0
    hidden.set_weights([kernel, bias])
    out_kernel, out_bias = logits.get_weights()
    out_kernel[:dead] = 0.0
    logits.set_weights([out_kernel, out_bias])
    model.save(path)
    return path


def test_a_model_sparser_than_the_target_as_uploaded_succeeds_and_says_so(client, worker, files, tmp_path):
    path = _with_dead_units(files["keras"], tmp_path / "sparse.keras", dead=28)
    model = client.upload_model(path)
    data = client.upload_dataset(files["data"])
    spec = job_spec(
        model.id, dataset=data.id, schedule=constant_sparsity(0.5, frequency=1), epochs=1, batch_size=64, seed=3
    )
    spec.report.enabled = False
    job = client.submit(spec)
    raw = job.result(timeout=300).raw
    layers = {layer.name: layer for layer in raw.layers}
    assert layers["hidden"].target_sparsity == pytest.approx(0.5)
    assert layers["hidden"].sparsity >= 28 / 32 and layers["logits"].sparsity >= 28 / 32
    assert raw.pruned_kernel_sparsity > 0.5 + 0.1
    logs = [e.log for e in job.watch(after_event_id="") if e.WhichOneof("kind") == "log"]
    notes = [log.message for log in logs if "zeros of its own" in log.message]
    assert len(notes) == 1 and "hidden 0.87" in notes[0], [log.message for log in logs]
    assert not any("far from the target" in log.message for log in logs)
    assert job.status().state == pb.JOB_STATE_SUCCEEDED
