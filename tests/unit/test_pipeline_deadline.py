"""The job's time limit holds through the exports and the report: the pipeline checks it
between them, not only when a phase starts (a job with many exports or long latency
measurements ran past its limit and SUCCEEDED)."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_reporter import PipelineReporter

import models
from pruning_client import constant_sparsity, job_spec
from pruning_core.validation import with_defaults
from pruning_worker.errors import JobDeadlineExceeded
from pruning_worker.inputs import Inputs
from pruning_worker.pipeline import run


class Reporter(PipelineReporter):
    """Records the phases; the time limit runs out once the export phase has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.checks_in_export = 0

    def check_between_steps(self) -> None:
        if self.phases and self.phases[-1] == "export":
            self.checks_in_export += 1
            raise JobDeadlineExceeded("the job ran past its time limit")


def test_the_time_limit_is_checked_during_the_exports_and_the_report(tmp_path):
    model = models.small_model(tmp_path / "m.keras")
    with np.load(models.dataset(tmp_path / "d.npz", n_train=128, n_test=32)) as f:
        data = (f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    spec = with_defaults(
        job_spec(
            "a" * 64, schedule=constant_sparsity(0.5, frequency=2), epochs=1, batch_size=32, exports=("keras", "tflite")
        )
    )
    reporter = Reporter()
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(JobDeadlineExceeded):
        run(spec, Inputs(model, data, 1 << 30), reporter, work)
    assert reporter.phases[-1] == "export" and reporter.checks_in_export == 1
    assert not list(work.glob("pruned_*"))  # stopped before the first export was written
