"""A regression (mean_squared_error, mean_absolute_error) has no accuracy: every figure the
service reports says so ("n/a", absent fields) and the losses stand in, instead of an accuracy
of 0 or Keras' meaningless binary accuracy of real-valued targets."""

from __future__ import annotations

import io

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import cli as cli_module
from pruning_client.report import job_report, sweep_report
from pruning_client.results import PruneResult
from pruning_core import sweeps, validation


def _regression() -> pb.PruneResult:
    r = pb.PruneResult(
        baseline=pb.Metrics(loss=0.25),
        pruned=pb.Metrics(loss=0.31),
        device="CPU",
        history=[pb.EpochSummary(epoch=1, loss=0.4, val_loss=0.35, sparsity=0.5)],
        export_accuracy=[],
    )
    r.artifacts.add(id="a" * 64, format="keras", filename="pruned_0.keras")
    return r


def _classification() -> pb.PruneResult:
    r = _regression()
    r.baseline.accuracy, r.pruned.accuracy, r.accuracy_delta = 0.97, 0.96, -0.01
    r.export_accuracy.add(format="tflite", accuracy=0.955, samples=100)
    return r


def test_the_sdk_gives_none_for_the_accuracies_of_a_regression():
    result = PruneResult.from_proto(_regression())
    assert (result.baseline_accuracy, result.pruned_accuracy, result.accuracy_delta) == (None, None, None)
    assert (result.baseline_loss, result.pruned_loss) == (0.25, 0.31)
    assert result.to_dict()["pruned_accuracy"] is None
    classified = PruneResult.from_proto(_classification())
    assert (classified.pruned_accuracy, classified.accuracy_delta) == (pytest.approx(0.96), pytest.approx(-0.01))
    assert "(-0.50 pp against the Keras model)" in classified.export_accuracy_lines()[0][1]


def test_the_result_table_and_the_report_say_n_a_and_show_the_losses():
    table = cli_module.format_table(PruneResult.from_proto(_regression()))
    assert "test accuracy" in table and "n/a" in table and "accuracy delta: n/a" in table
    assert "0.2500" in table and "0.3100" in table  # the losses
    assert "test accuracy" in table and "0.0000" not in table.split("sparsity")[0]
    markdown, html = job_report(pb.Job(id="j", state=pb.JOB_STATE_SUCCEEDED, result=_regression()))
    assert "| test accuracy | n/a | n/a |" in markdown
    assert "0.9600" in job_report(pb.Job(id="j", state=pb.JOB_STATE_SUCCEEDED, result=_classification()))[0]
    assert "n/a" in PruneResult.from_proto(_regression())._repr_html_()


def test_progress_of_a_regression_shows_no_accuracy():
    assert " acc" not in _progress_line(pb.Progress(epoch=1, total_epochs=2, step=10, total_steps=10, loss=0.5))
    assert "acc 0.9000" in _progress_line(
        pb.Progress(epoch=1, total_epochs=2, step=10, total_steps=10, loss=0.5, accuracy=0.9)
    )


def _progress_line(p: pb.Progress) -> str:
    out = io.StringIO()
    cli_module._Progress(live=False, stream=out).update(p)
    assert out.getvalue()
    return out.getvalue()


def test_a_regression_trial_carries_its_losses_and_no_accuracy():
    sweep = pb.Sweep(id="s", state=pb.JOB_STATE_SUCCEEDED)
    trial = sweep.trials.add(index=0, sparsity=0.5)
    sweeps.record_job(trial, pb.Job(state=pb.JOB_STATE_SUCCEEDED, result=_regression()), pb.AccuracyBudget())
    assert not trial.HasField("pruned_accuracy") and not trial.HasField("accuracy_loss_pp")
    assert (trial.baseline_loss, trial.pruned_loss) == (0.25, 0.31)
    assert "test loss 0.3100" in cli_module._trial_line(trial, budget=False)
    table = cli_module.format_sweep(sweep)
    assert "n/a" in table and "0.3100" in table
    assert "0.3100" in sweep_report(sweep)[0]
    classified = sweep.trials.add(index=1, sparsity=0.6)
    sweeps.record_job(classified, pb.Job(state=pb.JOB_STATE_SUCCEEDED, result=_classification()), pb.AccuracyBudget())
    assert classified.pruned_accuracy == pytest.approx(0.96) and classified.accuracy_loss_pp == pytest.approx(1.0)


def test_the_worker_reads_accuracies_from_keras_figures():
    from pruning_worker.evaluate import accuracy, metrics

    assert accuracy({"loss": 1.0, "accuracy": 0.5, "val_accuracy": 0.4}) == 0.5
    assert accuracy({"loss": 1.0, "accuracy": 0.5, "val_accuracy": 0.4}, "val_") == 0.4
    several = {"loss": 1.0, "a_accuracy": 0.5, "b_accuracy": 0.7, "val_a_accuracy": 0.1, "val_b_accuracy": 0.3}
    assert accuracy(several) == pytest.approx(0.6) and accuracy(several, "val_") == pytest.approx(0.2)
    assert accuracy({"loss": 1.0, "val_loss": 2.0}) is None and accuracy({"loss": 1.0}, "val_") is None
    assert metrics("mean_squared_error") == metrics("mean_absolute_error") == []
    assert metrics("") == metrics("categorical_crossentropy") == ["accuracy"]
    assert validation.is_regression("mean_squared_error") and not validation.is_regression("")


def test_early_stopping_watches_the_validation_loss_without_an_accuracy():
    import numpy as np

    from pruning_worker.callbacks import early_stopping

    on_accuracy = early_stopping(2, 0, 10, on_accuracy=True)
    assert on_accuracy.monitor == "val_accuracy" and on_accuracy.monitor_op is np.greater
    on_loss = early_stopping(2, 0, 10, on_accuracy=False)
    assert on_loss.monitor == "val_loss" and on_loss.monitor_op is np.less


def test_mlflow_gets_no_accuracy_for_a_regression():
    from pruning_worker.mlflow_hook import metrics

    figures = metrics(_regression())
    assert "pruned_accuracy" not in figures and "accuracy_delta" not in figures
    assert figures["pruned_loss"] == pytest.approx(0.31)
    assert metrics(_classification())["pruned_accuracy"] == pytest.approx(0.96)


def test_a_skipped_baseline_reads_n_a_not_zero():
    r = pb.PruneResult(pruned=pb.Metrics(loss=0.31, accuracy=0.9), device="CPU")  # no baseline at all
    result = PruneResult.from_proto(r)
    assert result.baseline_loss is None and result.baseline_accuracy is None and result.accuracy_delta is None
    table = cli_module.format_table(result)
    assert "test loss" in table and "n/a" in table.split("test loss")[1].splitlines()[0]
    assert "| test loss | n/a | 0.3100 |" in job_report(pb.Job(id="j", state=pb.JOB_STATE_SUCCEEDED, result=r))[0]
    trial = pb.Trial(index=0, sparsity=0.5)
    sweeps.record_job(trial, pb.Job(state=pb.JOB_STATE_SUCCEEDED, result=r), pb.AccuracyBudget())
    assert not trial.HasField("baseline_loss") and trial.pruned_accuracy == pytest.approx(0.9)
    from pruning_worker.mlflow_hook import metrics

    assert "baseline_loss" not in metrics(r) and "baseline_loss" in metrics(_regression())


def test_a_search_trial_without_an_accuracy_is_told_so():
    from pruning_server.sweeps import _told

    sweep = pb.Sweep(id="s")
    trial = sweep.trials.add(index=0, sparsity=0.5)
    sweeps.record_job(trial, pb.Job(state=pb.JOB_STATE_SUCCEEDED, result=_regression()), pb.AccuracyBudget())
    assert _told(trial, sweep).endswith("no accuracy to compare (test loss 0.3100), within the budget")


def test_the_size_rows_name_the_format_they_measure_unless_it_is_keras():
    """With --export tflite_int8 --export keras the size rows were the int8 file's, beside the
    Keras model's accuracy, with nothing saying so."""
    table = cli_module.format_table(PruneResult.from_proto(_classification()))
    assert "model size (gzip) " in table and "keras" not in table.split("accuracy delta")[0]
    first_tflite = _classification()
    del first_tflite.artifacts[:]
    first_tflite.artifacts.add(id="b" * 64, format="tflite_int8", filename="pruned_0.tflite")
    result = PruneResult.from_proto(first_tflite)
    lines = cli_module.format_table(result).splitlines()
    assert lines[3].startswith("model size (raw, tflite_int8) ") and lines[4].startswith(
        "model size (gzip, tflite_int8)"
    )
    assert len({len(line) for line in lines[:5]}) == 1  # the columns still line up
    assert "model size (gzip bytes, tflite_int8)" in result._repr_html_()
