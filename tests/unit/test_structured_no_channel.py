"""A structured job whose rounding keeps every channel says so with each layer's reason
(round_to here), rather than claim a cut it did not make: with a weight schedule it warns and
goes on with the widths whole; with nothing else to do it fails before fine-tuning. One on a
model of embeddings and recurrent layers says those keep their width."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_reporter import PipelineReporter

import models
from pruning_client import constant_sparsity, job_spec, structured
from pruning_core.validation import with_defaults
from pruning_worker.errors import JobInputError
from pruning_worker.inputs import Inputs
from pruning_worker.pipeline import run


def _round_everything_up(tmp_path, **kwargs):
    model = models.small_model(tmp_path / "m.keras")  # conv of 4 filters, hidden of 32 units
    with np.load(models.dataset(tmp_path / "d.npz", n_train=128, n_test=32)) as f:
        data = (f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    # half of each layer's channels, rounded up to a multiple of 64: all of them
    spec = with_defaults(
        job_spec(
            "a" * 64,
            structured=structured(0.5, round_to=64, latency_repeats=1),
            epochs=1,
            batch_size=32,
            report=False,
            **kwargs,
        )
    )
    reporter = PipelineReporter()
    work = tmp_path / "work"
    work.mkdir()
    return lambda: run(spec, Inputs(model, data, 1 << 30), reporter, work), reporter


def test_a_structured_job_with_a_schedule_that_removes_no_channel_warns_and_keeps_the_widths(tmp_path):
    job, reporter = _round_everything_up(tmp_path, schedule=constant_sparsity(0.5, frequency=1))
    result, _ = job()
    warnings = [m for level, m in reporter.lines if level == "WARNING"]
    assert any(m.startswith("structured pruning removed no channel") and "round_to 64 rounds" in m for m in warnings)
    s = result.structured
    assert s.groups_pruned == 0 and s.params_after == s.params_before
    assert all(x.channels_after == x.channels_before for x in s.layers)
    assert result.pruned_kernel_sparsity > 0.4  # the schedule's part was done


def test_a_structured_only_job_that_removes_no_channel_fails_before_fine_tuning(tmp_path):
    """It fine-tuned the model unchanged and SUCCEEDED, handing back what was uploaded."""
    job, reporter = _round_everything_up(tmp_path, schedule=None)
    with pytest.raises(
        JobInputError, match=r"^spec\.pruning\.structured: structured pruning can remove no channel .*round_to 64"
    ):
        job()
    assert reporter.phases[-1] == "structure" and "fine_tune" not in reporter.phases


def test_structured_pruning_of_a_recurrent_model_names_the_layers_it_leaves_whole():
    """Embedding, GRU and LSTM appeared nowhere in the result, and the warning blamed round_to."""
    import tf_keras as keras

    from pruning_worker.structured import Options, prune_channels

    inputs = keras.Input((10,), dtype="int32")
    x = keras.layers.Embedding(50, 8, name="emb")(inputs)
    x = keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True), name="bi")(x)
    x = keras.layers.LSTM(4, name="lstm")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="cls")(x))
    outcome = prune_channels(model, Options(ratio=0.5))
    whole = dict(outcome.left_whole)
    assert {"emb", "bi", "lstm", "cls"} <= set(whole) and not outcome.keep
    assert whole["lstm"] == "LSTM layers keep their width (embeddings and recurrent layers)"
    assert whole["bi"].startswith("Bidirectional layers keep their width")
