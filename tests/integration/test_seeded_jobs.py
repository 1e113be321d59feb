"""A job with spec.training.seed gives the same figures in every worker process, random
augmentation layers included: their generators are made as the model is built, and the seed
was set only after (two processes gave 0.55134 and 0.55146 as the first epoch's loss)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration

JOB = r"""
import json, sys
import numpy as np
from pipeline_reporter import PipelineReporter
import keras3_models
from pruning_client import job_spec
from pruning_core import recipe
from pruning_core.validation import with_defaults
from pruning_worker.inputs import Inputs
from pruning_worker.pipeline import run

path, work = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (192, 12, 12, 3)).astype(np.float32)
y = rng.integers(0, 3, 192)
spec = with_defaults(job_spec("a" * 64, epochs=2, batch_size=32, validation_split=0.25, report=False, seed=7))
recipe.resolve(spec, 144 // 32)
result, _ = run(spec, Inputs(path, (x, y, x[:32], y[:32]), 1 << 30), PipelineReporter(), __import__("pathlib").Path(work))
print(json.dumps([[e.loss, e.val_loss] for e in result.history] + [[result.pruned.loss, result.pruned.accuracy]]))
"""


def test_a_seeded_job_with_augmentation_layers_is_the_same_in_every_process(tmp_path):
    import keras3_models

    path, _ = keras3_models.save("augmented_image", tmp_path / "augmented.keras")
    env = {
        **os.environ,
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(ROOT / "tests"),
    }
    figures = []
    for run in range(2):
        work = tmp_path / f"work-{run}"
        work.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", JOB, str(path), str(work)], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert figures[0] == figures[1]
