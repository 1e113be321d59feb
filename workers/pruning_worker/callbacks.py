"""Keras callbacks of a fine-tuning run: throttled progress events and prompt cancel, the
history (with a stop on a non-finite loss) and early stopping."""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any, Protocol

import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_core.phases import Phase

from .evaluate import accuracy
from .recipe import Schedule, learning_rate, scheduled_sparsity


class _OurCallbacksAreNotTheUsers(logging.Filter):
    """Drops Keras's "Callback method `on_train_batch_end` is slow compared to the batch time
    ... Check your callbacks.": every callback of a job is the service's own (progress,
    cancellation, checkpoints), so it told a user of a tiny model to check callbacks they have
    none of."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is slow compared to the batch time" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_OurCallbacksAreNotTheUsers())

_WRAPPER = re.compile(r"(?:masked_)?prune_low_magnitude_")


def metric_name(key: str) -> str:
    """A Keras log key as the model's outputs name it: Keras names an output's metrics by its
    layer, which the pruning wrapper renames ("masked_prune_low_magnitude_cls_accuracy")."""
    return _WRAPPER.sub("", key)


class Reporter(Protocol):
    interval_s: float

    def progress(self, progress: pb.Progress, force: bool = False) -> None: ...
    def log(self, message: str, level: str = "INFO") -> None: ...
    def phase(self, phase: str, message: str) -> None: ...
    def should_stop(self) -> bool: ...
    def check_between_steps(self) -> None: ...
    def timings(self) -> dict[str, float]: ...
    def measured(self, result: pb.PruneResult) -> None: ...


class ProgressCallback(keras.callbacks.Callback):
    """Sends throttled progress events and stops training promptly on cancel."""

    def __init__(self, reporter: Reporter, schedule: Schedule, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.reporter, self.schedule = reporter, schedule
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.total = epochs * steps_per_epoch
        self.epoch = 0
        self.step = 0  # the last step trained
        self.cancelled = False
        self._last = time.monotonic()
        # The ETA's rate is timed from the end of the first step: that one also traces and
        # compiles the training function (seconds), which would make the first ETA an hour.
        self._first: tuple[int, float] | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        self._first = None

    def eta(self, step: int, now: float) -> float:
        """Seconds left at ``step``, from the pace since the first step ended; 0 (not known
        yet) before a second step has ended."""
        if self._first is None:
            return 0.0
        first_step, first_at = self._first
        if step <= first_step:
            return 0.0
        return (now - first_at) / (step - first_step) * (self.total - step)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch = epoch

    def _send(self, step: int, logs: Any, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.reporter.interval_s:
            return  # throttled here too: asking the schedule for its sparsity runs TensorFlow ops
        self._last = now
        eta = self.eta(step, now)
        self.reporter.progress(
            pb.Progress(
                phase=Phase.FINE_TUNE,
                epoch=self.epoch + 1,
                total_epochs=self.epochs,
                step=step,
                total_steps=self.total,
                loss=float((logs or {}).get("loss", 0.0)),
                accuracy=accuracy(logs or {}),
                sparsity=scheduled_sparsity(self.schedule, step),
                eta_seconds=eta,
            ),
            force=force,
        )

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.step = self.epoch * self.steps_per_epoch + batch + 1
        if self._first is None:
            self._first = (self.step, time.monotonic())
        self._send(self.step, logs, force=False)
        if self.reporter.should_stop():
            self.cancelled = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        step = (epoch + 1) * self.steps_per_epoch
        if self.model.stop_training and epoch * self.steps_per_epoch < self.step < step:
            # Stopped inside the epoch (a cancel, a loss gone non-finite): Keras still ends the
            # epoch, with the figures of the steps it ran; they are not an epoch's.
            self._send(self.step, logs, force=True)
            ran = self.step - epoch * self.steps_per_epoch
            self.reporter.log(f"epoch {epoch + 1}/{self.epochs} stopped after {ran} of {self.steps_per_epoch} steps")
            return
        self._send(step, logs, force=True)
        figures = ", ".join(f"{metric_name(k)} {v:.4f}" for k, v in sorted((logs or {}).items()))
        self.reporter.log(
            f"epoch {epoch + 1}/{self.epochs}: {figures}, target sparsity {scheduled_sparsity(self.schedule, step):.3f}"
        )


class HistoryCallback(keras.callbacks.Callback):
    """Keeps the per-epoch figures for the result, and stops at the first non-finite loss
    (``diverged`` then says where), since nothing after it can be handed back."""

    def __init__(self, schedule: Schedule, steps_per_epoch: int):
        super().__init__()
        self.schedule, self.steps_per_epoch = schedule, steps_per_epoch
        self.history: list[pb.EpochSummary] = []
        self.diverged = ""
        self.epoch = 0
        self.batches = 0  # steps of the current epoch run

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.epoch, self.batches = epoch, 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.batches = batch + 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self.model.stop_training and self.batches < self.steps_per_epoch and not self.diverged:
            return  # cancelled inside the epoch: its figures are not an epoch's
        logs = logs or {}
        summary = pb.EpochSummary(
            epoch=epoch + 1,
            loss=float(logs.get("loss", 0.0)),
            accuracy=accuracy(logs),
            val_accuracy=accuracy(logs, "val_"),
            sparsity=scheduled_sparsity(self.schedule, (epoch + 1) * self.steps_per_epoch - 1),
            learning_rate=learning_rate(self.model.optimizer),
        )
        if "val_loss" in logs:
            summary.val_loss = float(logs["val_loss"])
        self.history.append(summary)


def early_stopping(
    patience: int, final_step: int, steps_per_epoch: int, on_accuracy: bool
) -> keras.callbacks.EarlyStopping:
    """Stops once the validation accuracy (``on_accuracy``: a classification of one output;
    else the validation loss, for a regression or a model of several outputs, whose
    accuracies Keras logs per output) has not improved for ``patience`` epochs, watching only
    the epochs that end at the final sparsity (from the one holding ``final_step``), and keeps
    the best of them."""
    return keras.callbacks.EarlyStopping(
        monitor="val_accuracy" if on_accuracy else "val_loss",
        mode="max" if on_accuracy else "min",
        patience=patience,
        restore_best_weights=True,
        start_from_epoch=max(0, final_step) // steps_per_epoch,
    )
