"""Every optimizer the spec accepts runs a job, with and without the recipe's learning-rate
decay: "adamw" failed every job ("Unknown optimizer", read as a legacy optimizer's config,
which has none) and "nadam" every job with decay (the legacy Nadam refuses a schedule)."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_reporter import PipelineReporter

import models
from pruning_client import job_spec
from pruning_core import recipe
from pruning_core.validation import OPTIMIZERS, with_defaults
from pruning_worker.inputs import Inputs
from pruning_worker.pipeline import run


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    import keras

    tmp = tmp_path_factory.mktemp("optimizers")
    model = keras.Sequential(
        [keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)]
    )
    path = tmp / "m.keras"
    model.save(path)
    with np.load(models.dataset(tmp / "d.npz", n_train=512, n_test=64)) as f:
        data = (f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    return path, data


@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_accepted_optimizer_runs_a_job(job_inputs, tmp_path, optimizer, decay):
    path, data = job_inputs
    spec = with_defaults(job_spec("a" * 64, epochs=2, batch_size=32, validation_split=0.25, report=False))
    spec.training.optimizer = optimizer
    spec.training.learning_rate = 1e-3
    spec.training.learning_rate_decay = decay
    recipe.resolve(spec, 384 // 32)
    result, _ = run(spec, Inputs(path, data, 1 << 30), PipelineReporter(), tmp_path)
    assert len(result.history) == 2 and all(np.isfinite(e.loss) for e in result.history)
    assert any(layer.pruned and layer.sparsity > 0.5 for layer in result.layers)
