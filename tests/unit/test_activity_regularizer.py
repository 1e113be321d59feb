"""A prunable layer with an activity regularizer: TFMOT's pruning wrapper cannot carry it (the
job failed in fine-tuning with "tensor ... defined in FuncGraph(name=..._scratch_graph) ... out
of scope" after minutes of work). The layer is left whole, said so by the upload's summary and
the plan, and the job prunes the rest."""

from __future__ import annotations

import numpy as np
from pipeline_reporter import PipelineReporter

import models
from pruning_client import job_spec
from pruning_core import modelcheck, recipe
from pruning_core.validation import with_defaults
from pruning_worker.inputs import Inputs
from pruning_worker.pipeline import run


def test_a_layer_with_an_activity_regularizer_is_left_whole_and_the_rest_pruned(tmp_path):
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(32, activation="relu", name="fc", activity_regularizer=keras.regularizers.L1(1e-5)),
            keras.layers.Dense(4, name="out"),
        ]
    )
    path = tmp_path / "m.keras"
    model.save(path)
    summary = {layer.name: layer for layer in modelcheck.inspect_model(path, 1 << 30).summary.layers}
    assert not summary["fc"].prunable and summary["fc"].left_whole == "activity regularizer"
    assert summary["out"].prunable

    with np.load(models.dataset(tmp_path / "d.npz", n_train=1024, n_test=64)) as f:
        data = (f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    spec = with_defaults(job_spec("a" * 64, epochs=2, batch_size=32, validation_split=0.0, report=False))
    recipe.resolve(spec, 1024 // 32)  # as CreateJob does: the schedule's steps on this data
    work = tmp_path / "work"
    work.mkdir()
    result, _ = run(spec, Inputs(path, data, 1 << 30), PipelineReporter(), work)
    layers = {layer.name: layer for layer in result.layers}
    assert not layers["fc"].pruned and layers["fc"].sparsity < 0.05
    assert layers["out"].pruned and layers["out"].sparsity > 0.7
