"""Training stopped inside an epoch (a cancel) reports the step it reached, not the epoch's
end, and logs no epoch summary for the steps it did not run (real tf_keras training)."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_worker.callbacks import HistoryCallback, ProgressCallback


class Reporter:
    interval_s = 0.0

    def __init__(self, stop_after: int) -> None:
        self.stop_after, self.checks = stop_after, 0
        self.sent: list[pb.Progress] = []
        self.lines: list[str] = []

    def progress(self, progress: pb.Progress, force: bool = False) -> None:
        self.sent.append(progress)

    def log(self, message: str, level: str = "INFO") -> None:
        self.lines.append(message)

    def should_stop(self) -> bool:
        self.checks += 1
        return self.checks >= self.stop_after


def _fit(
    reporter: Reporter, epochs: int = 3, steps: int = 10, history: HistoryCallback | None = None
) -> ProgressCallback:
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = np.zeros((steps * 8, 4), "float32"), np.zeros(steps * 8, "int64")
    callback = ProgressCallback(reporter, None, epochs, steps)  # type: ignore[arg-type]  # no schedule: sparsity 0
    more = [history] if history is not None else []
    model.fit(x, y, batch_size=8, epochs=epochs, callbacks=[callback, *more], verbose=0, validation_split=0.0)
    return callback


def test_a_cancel_inside_an_epoch_reports_the_step_it_reached():
    reporter = Reporter(stop_after=14)  # the 4th step of the 2nd epoch
    history = HistoryCallback(None, 10)
    callback = _fit(reporter, history=history)
    assert [e.epoch for e in history.history] == [1]  # the epoch cut short is no epoch of the history
    assert callback.cancelled and callback.step == 14
    assert max(p.step for p in reporter.sent) == 14 and reporter.sent[-1].epoch == 2
    assert any(line.startswith("epoch 1/3: ") for line in reporter.lines)  # the whole first epoch
    assert not any(line.startswith("epoch 2/3: ") for line in reporter.lines)
    assert "epoch 2/3 stopped after 4 of 10 steps" in reporter.lines


def test_epochs_that_ran_whole_are_reported_whole():
    reporter = Reporter(stop_after=10**9)
    callback = _fit(reporter, epochs=2)
    assert not callback.cancelled and reporter.sent[-1].step == 20
    assert [line.split(":")[0] for line in reporter.lines] == ["epoch 1/2", "epoch 2/2"]


def test_the_epoch_line_names_a_wrapped_output_s_metrics_by_the_output():
    """Keras names an output's metrics by its layer, which the pruning wrapper renames: the log
    read "masked_prune_low_magnitude_cls_accuracy"."""
    from pruning.v1 import pruning_pb2 as pb
    from pruning_client import constant_sparsity
    from pruning_worker import recipe

    inputs = keras.layers.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(2, name="cls")(inputs), keras.layers.Dense(1, name="reg")(inputs)])
    spec = pb.PruningSpec(schedule=constant_sparsity(0.5, frequency=1), block_size=[1, 1])
    pruned, _ = recipe.apply_pruning(model, spec, recipe.make_schedule(spec, 4))
    pruned.compile(
        "sgd", [keras.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"], metrics=[["accuracy"], []]
    )
    import tensorflow_model_optimization as tfmot

    reporter = Reporter(stop_after=10**9)
    callback = ProgressCallback(reporter, None, 1, 4)  # type: ignore[arg-type]
    x = np.zeros((32, 4), "float32")
    pruned.fit(
        x,
        [np.zeros(32, "int64"), np.zeros(32, "float32")],
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[callback, tfmot.sparsity.keras.UpdatePruningStep()],
    )
    (line,) = reporter.lines
    assert "cls_accuracy" in line and "reg_loss" in line and "prune_low_magnitude" not in line


def test_the_eta_leaves_out_the_first_step_and_is_unknown_until_a_second_ends():
    """The first step also traces the training function (seconds): timed with the others it
    made the first ETA about an hour for a job of seconds."""
    callback = ProgressCallback(Reporter(stop_after=10**9), None, 1, 101)  # type: ignore[arg-type]
    callback.on_train_begin()
    callback._first = (1, 100.0)  # the first step ended at t=100 s, after 5 s of tracing
    assert callback.eta(1, 100.0) == 0.0  # nothing timed yet: not known
    assert callback.eta(11, 101.0) == pytest.approx(0.1 * 90)  # 10 steps in 1 s, 90 left
    reporter = Reporter(stop_after=10**9)
    _fit(reporter, epochs=1, steps=10)
    first, *rest = [p for p in reporter.sent if p.step]
    assert first.step == 1 and first.eta_seconds == 0.0
    assert rest[-1].step == 10 and rest[-1].eta_seconds == 0.0 and all(p.eta_seconds >= 0 for p in rest)
