"""What a new user saw: a cancelled job's report of made-up zeros, a plan and a result that
counted "weights" differently, "1 epochs", and an ended job's status with a live ETA."""

from __future__ import annotations

from typing import Any

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import cli as cli_module
from pruning_client.cli import _trial_line, format_plan, run
from pruning_client.report import job_report
from pruning_client.results import JobPlan, PruneResult, recipe_text

JOB = "j" * 24


def _cancelled() -> pb.Job:
    """Cancelled at step 422 of 844: no result figure was measured."""
    job = pb.Job(id=JOB, state=pb.JOB_STATE_CANCELLED, attempt=1)
    job.error.message = "cancelled while running"
    job.progress.CopyFrom(
        pb.Progress(phase="fine_tune", epoch=1, total_epochs=2, step=422, total_steps=844, sparsity=0.8, eta_seconds=4)
    )
    return job


def _succeeded() -> pb.Job:
    job = pb.Job(id=JOB, state=pb.JOB_STATE_SUCCEEDED, attempt=1)
    r = job.result
    r.device = "CPU"
    r.baseline.CopyFrom(pb.Metrics(loss=0.05, accuracy=0.98))
    r.pruned.CopyFrom(pb.Metrics(loss=0.06, accuracy=0.975))
    r.accuracy_delta = -0.005
    r.pruned_kernel_sparsity = 0.8
    r.size_before.gzip_bytes, r.size_after.gzip_bytes = 80000, 20000
    r.compression_ratio = 4.0
    for epoch in (1, 2):
        r.history.add(epoch=epoch, loss=0.1, sparsity=0.8)
    return job


# -- 1. a cancelled job's report ---------------------------------------------------------------


def test_a_cancelled_jobs_report_shows_no_made_up_figures() -> None:
    markdown, page = job_report(_cancelled())
    assert "cancelled: cancelled while running; stopped at step 422 of 844 (fine_tune)" in markdown
    assert "0 epochs" not in markdown and "unknown device" not in markdown
    assert "| test loss | n/a | n/a |" in markdown
    assert "| file size (gzip) | n/a | n/a |" in markdown
    assert "| pruned kernel sparsity |  | n/a |" in markdown
    assert "| compression (gzip) |  | n/a |" in markdown
    assert "0.0000" not in markdown and "0.00x" not in markdown
    assert "0.0000" not in page and "0.00x" not in page and "unknown device" not in page


def test_a_cancelled_jobs_report_keeps_what_was_measured() -> None:
    job = _cancelled()
    job.result.baseline.CopyFrom(pb.Metrics(loss=0.05, accuracy=0.98))
    job.result.size_before.gzip_bytes = 80000
    job.result.device = "CPU"
    job.result.history.add(epoch=1, loss=0.1, sparsity=0.4)
    markdown, _ = job_report(job)
    assert "cancelled: cancelled while running; 1 epoch on CPU" in markdown
    assert "| test accuracy | 0.9800 | n/a |" in markdown and "| test loss | 0.0500 | n/a |" in markdown
    assert "| file size (gzip) | 80,000 | n/a |" in markdown


def test_a_succeeded_jobs_report_keeps_its_figures() -> None:
    markdown, _ = job_report(_succeeded())
    assert "succeeded; 2 epochs on CPU" in markdown
    assert "| test loss | 0.0500 | 0.0600 |" in markdown
    assert "| file size (gzip) | 80,000 | 20,000 |" in markdown
    assert "| pruned kernel sparsity |  | 0.8000 |" in markdown
    assert "| compression (gzip) |  | 4.00x |" in markdown


# -- 2. the plan's count is of parameters (kernel and bias), the result's of kernel weights -----


def test_the_plan_calls_its_count_params_and_the_result_weights() -> None:
    plan = JobPlan.from_proto(
        pb.JobPlan(layers=[pb.LayerPlan(name="dense", class_name="Dense", weights=20290, final_sparsity=0.8)])
    )
    header = next(line for line in format_plan(plan).splitlines() if line.startswith("layer"))
    assert header.split() == ["layer", "class", "params", "final", "sparsity"]
    assert "<th>params</th>" in plan._repr_html_() and "<th>weights</th>" not in plan._repr_html_()
    result = pb.PruneResult()
    result.layers.add(name="dense", type="Dense", pruned=True, weights=20280, nonzero=4056, sparsity=0.8)
    assert "<th>weights</th>" in PruneResult.from_proto(result)._repr_html_()


# -- 3. one epoch ------------------------------------------------------------------------------


def test_one_epoch_is_singular() -> None:
    one = pb.RecipeResult(name="plain", learning_rate=0.001, early_stopping_patience=1, epochs_run=1, best_epoch=1)
    text = recipe_text(one)
    assert "patience of 1 epoch;" in text and "; 1 epoch run, weights of epoch 1 kept" in text
    assert "; 2 epochs run" in recipe_text(pb.RecipeResult(name="plain", epochs_run=2, best_epoch=2))
    assert "(rung 0, 1 epoch)" in _trial_line(pb.Trial(index=0, sparsity=0.5, rung=0, epochs=1), False)
    assert "(rung 1, 3 epochs)" in _trial_line(pb.Trial(index=1, sparsity=0.5, rung=1, epochs=3), False)


# -- 4. an ended job's status has no ETA -------------------------------------------------------


class _StatusClient:
    job = pb.Job()

    def __init__(self, target: str, **options: Any) -> None:
        pass

    def __enter__(self) -> _StatusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get_job(self, job_id: str) -> pb.Job:
        return self.job


@pytest.mark.parametrize(
    "state, eta",
    [
        (pb.JOB_STATE_RUNNING, True),
        (pb.JOB_STATE_SUCCEEDED, False),
        (pb.JOB_STATE_FAILED, False),
        (pb.JOB_STATE_CANCELLED, False),
    ],
)
def test_status_shows_an_eta_only_while_the_job_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], state: pb.JobState.ValueType, eta: bool
) -> None:
    job = _cancelled()
    job.state = state
    monkeypatch.setattr(_StatusClient, "job", job)
    monkeypatch.setattr(cli_module, "Client", _StatusClient)
    assert run(["status", JOB]) == 0
    out = capsys.readouterr().out
    assert "step 422/844 sparsity 0.800" in out
    assert ("phase fine_tune" in out) is (state != pb.JOB_STATE_SUCCEEDED)  # one that succeeded ran them all
    assert ("eta 4s" in out) is eta


def test_a_trial_line_gives_its_tflite_latency_when_measured() -> None:
    done = pb.Trial(index=2, sparsity=0.8, state=pb.JOB_STATE_SUCCEEDED, pruned_accuracy=0.97, gzip_bytes=1000)
    assert "TFLite" not in _trial_line(done, False)
    done.tflite_latency_ms = 0.0421
    assert "gzip 1,000 bytes, TFLite 0.042 ms" in _trial_line(done, False)


def test_a_trials_latency_stands_beside_its_own_baseline_and_says_when_it_is_noise() -> None:
    """A sweep's trials read 0.020 ms at 0.5 and 0.006 ms at 0.8, 'three times faster', where
    each job's own table said its difference was within noise."""
    from pruning_client.report import sweep_report
    from pruning_core import sweeps

    job = pb.Job(id="j" * 24, state=pb.JOB_STATE_SUCCEEDED)
    job.result.latency.add(runtime="tf", batch_size=1, before_ms=1.0, after_ms=0.9)
    job.result.latency.add(runtime="tflite", batch_size=1, before_ms=0.0061, after_ms=0.0059, within_noise=True)
    trial = pb.Trial(index=1, sparsity=0.8)
    sweeps.record_job(trial, job, pb.AccuracyBudget())
    assert (trial.tflite_latency_ms, trial.tflite_baseline_latency_ms) == (0.0059, 0.0061)
    assert trial.tflite_latency_within_noise
    assert "TFLite 0.006 ms (baseline 0.006 ms, within noise)" in _trial_line(trial, False)
    job.result.latency[1].within_noise = False
    sweeps.record_job(trial, job, pb.AccuracyBudget())
    assert _trial_line(trial, False).endswith("TFLite 0.006 ms (baseline 0.006 ms)")
    sweep = pb.Sweep(id="s" * 24, state=pb.JOB_STATE_SUCCEEDED, trials=[trial])
    assert "0.006 (baseline 0.006)" in sweep_report(sweep)[0]


def test_the_notebook_view_of_a_result_shows_what_the_cli_prints() -> None:
    result = pb.PruneResult(device="CPU")
    result.pruned.accuracy = 0.9208
    result.export_accuracy.add(format="tflite", accuracy=0.9208, samples=10_000)
    result.recipe.CopyFrom(pb.RecipeResult(name="keep_accuracy", learning_rate=0.002, epochs_run=2, best_epoch=2))
    result.latency.add(runtime="tflite", device="CPU", batch_size=1, before_ms=0.05, after_ms=0.02, repeats=10)
    page = PruneResult.from_proto(result)._repr_html_()
    assert "tflite export" in page and "10,000 samples" in page  # the file's own accuracy
    assert "<td>recipe</td>" in page and "keep_accuracy" in page
    assert "<th>latency (median ms)</th>" in page and "<td>0.050</td>" in page and "2.50x" in page
