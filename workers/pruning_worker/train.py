"""Fine-tuning of the pruned model, with a checkpoint after every epoch.

When the runner sets :func:`checkpointing` for a job, every finished epoch writes the model's
and the optimizer's variables (the pruning wrappers' masks and steps, the optimizer's step and
moments) to the job's checkpoint directory. A later attempt of the same job (its worker was
lost) restores the last one and goes on from the next epoch: the pruning schedule, the
learning-rate schedule and the step count continue where they were, and no step is redone.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import pathlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from google.protobuf import json_format
from tf_keras.src.engine import data_adapter

from pruning.v1 import pruning_pb2 as pb
from pruning_core.objectstore import (
    LocalStore,
    checkpoint_prefix,
    drop_superseded_checkpoints,
    one_line,
    read_checkpoint_record,
    unavailable_errors,
    write_checkpoint_record,
)

from . import shutdown, tferrors
from .callbacks import HistoryCallback
from .errors import STORE_ERRORS

log = logging.getLogger(__name__)


@dataclass
class Checkpoints:
    """Where one job keeps its epoch checkpoints, and how to tell the job about them. They are
    written to ``directory`` and kept in the artifact store, so the next attempt finds them on
    any host (with S3: sent to the bucket after each epoch)."""

    store: LocalStore
    job_id: str
    directory: pathlib.Path  # the store's checkpoint_dir for the job
    log: Callable[[str], None]
    # Raises StaleAttempt once a newer attempt owns the job. Both attempts keep the same keys, and
    # a checkpoint's save deletes the others, so a stale attempt (its worker cut off from Redis
    # past the reaper's patience, still training) would delete or overwrite the newer one's.
    confirm: Callable[[], None] = lambda: None
    # Raises when the artifact store does not answer within a few seconds. After a checkpoint
    # could not be sent because the store did not answer, each later one asks it first: a store
    # paused or cut off would hold every epoch's sends for their whole timeout and retries
    # (a minute and a half a file by default), the training waiting on them.
    probe: Callable[[], None] = lambda: None
    # The attempt writing (it names the files): it deletes only older attempts' checkpoints and
    # its own earlier epochs, never a newer attempt's (pruning_core.objectstore).
    attempt: int = 0
    _store_down: bool = field(default=False, init=False)

    def _owned(self, otherwise: str) -> bool:
        """Whether this attempt still owns the job (StaleAttempt once a newer one does); False,
        logging ``otherwise``, when the job store is away and whose job it is cannot be known."""
        try:
            self.confirm()
        except STORE_ERRORS as exc:
            self.log(f"{otherwise}: the job store did not answer ({exc})")
            return False
        return True

    def latest(self) -> dict[str, Any] | None:
        """{"epoch", "prefix", "history"} of the last checkpoint written, or None."""
        try:
            self.store.pull_checkpoint(self.job_id, self.directory)
        except unavailable_errors():
            # The store does not answer now: the attempt stops and goes back to the queue (the
            # artifact store's outage), to resume later. Started over, it would throw the kept
            # epochs away, and its first checkpoint sent would delete them from the store.
            raise
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint: the job starts over
            log.warning("could not fetch the checkpoint of job %s: %s", self.job_id, exc)
        return read_checkpoint_record(self.directory)

    def save(self, model: Any, epoch: int, history: list[pb.EpochSummary]) -> None:
        """Writes the checkpoint of ``epoch`` (1-based), then points the attempt's record at it;
        raises StaleAttempt, writing nothing, once a newer attempt owns the job."""
        if not self._owned(f"the checkpoint of epoch {epoch} was not kept"):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        prefix = checkpoint_prefix(self.attempt, epoch)
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(self.directory / prefix))
        record = {"epoch": epoch, "prefix": prefix, "history": [json_format.MessageToDict(h) for h in history]}
        write_checkpoint_record(self.directory, json.dumps(record).encode(), self.attempt)
        drop_superseded_checkpoints(self.directory, self.attempt, prefix)
        if self._store_down:
            try:
                self.probe()
            except unavailable_errors() as exc:
                self.log(
                    f"the checkpoint of epoch {epoch} was not kept in the artifact store: it still does not answer "
                    f"({one_line(exc, 200)})"
                )
                return
            self._store_down = False
        try:
            self.store.push_checkpoint(self.job_id, self.directory, prefix, self.attempt)
        except Exception as exc:  # noqa: BLE001 - a checkpoint only saves time: the job goes on
            self._store_down = isinstance(exc, unavailable_errors())
            self.log(f"the checkpoint of epoch {epoch} was not kept in the artifact store: {one_line(exc, 300)}")

    def clear(self) -> None:
        """Deletes the job's checkpoints (one that does not fit: the attempt starts over): its
        own and older attempts', never a newer one's; raises StaleAttempt, deleting nothing,
        once a newer attempt owns the job."""
        if not self._owned("the checkpoints were not deleted"):
            return  # left: the next save replaces them
        drop_superseded_checkpoints(self.directory, self.attempt, None)
        try:
            self.store.drop_checkpoints(self.job_id, self.attempt)
        except Exception as exc:  # noqa: BLE001 - the job starts over either way; retention deletes them
            log.warning("could not delete the checkpoints of job %s: %s", self.job_id, exc)


_CURRENT: contextvars.ContextVar[Checkpoints | None] = contextvars.ContextVar("checkpoints", default=None)


@contextlib.contextmanager
def checkpointing(checkpoints: Checkpoints) -> Iterator[Checkpoints]:
    """Fine-tuning inside keeps its epoch checkpoints in ``checkpoints``."""
    token = _CURRENT.set(checkpoints)
    try:
        yield checkpoints
    finally:
        _CURRENT.reset(token)


class _Checkpoint(keras.callbacks.Callback):
    def __init__(self, checkpoints: Checkpoints, history: HistoryCallback | None):
        super().__init__()
        self.checkpoints, self.history = checkpoints, history
        self.batches = 0  # steps of the current epoch run

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.batches = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.batches = batch + 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self.model.stop_training and not (shutdown.due() and self._whole_epoch(logs)):
            return  # stopped inside the epoch, cancelled, early-stopped or diverged
        # The worker shutting down at the epoch's last step keeps the epoch: the next attempt
        # goes on after it instead of running it again (a cancel keeps nothing: nothing resumes).
        self.checkpoints.save(self.model, epoch + 1, self.history.history if self.history else [])

    def _whole_epoch(self, logs: Any) -> bool:
        steps = (self.params or {}).get("steps")
        loss = (logs or {}).get("loss")
        finite = loss is None or math.isfinite(float(loss))
        diverged = bool(self.history and self.history.diverged)
        return steps is not None and 0 < steps <= self.batches and finite and not diverged


def _resume(model: Any, checkpoints: Checkpoints, epochs: int, history: HistoryCallback | None) -> int:
    """Restores the last checkpoint into ``model`` (its optimizer built, where it builds);
    returns the epoch to start from (0: none;
    ``epochs`` when fine-tuning had ended: an attempt lost while exporting goes on from there)."""
    latest = checkpoints.latest()
    if latest is None or not 0 < int(latest["epoch"]) <= epochs:
        return 0
    status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        str(checkpoints.directory / latest["prefix"])
    )
    status.assert_existing_objects_matched()
    if history is not None:
        history.history[:0] = [json_format.ParseDict(h, pb.EpochSummary()) for h in latest["history"]]
    epoch = int(latest["epoch"])
    ahead = "no epoch is left to run" if epoch == epochs else "its steps are not run again"
    checkpoints.log(
        f"resuming from the checkpoint of epoch {epoch}/{epochs} "
        f"(step {int(model.optimizer.iterations.numpy())}): {ahead}"
    )
    return epoch


def fine_tune(model: Any, x: np.ndarray, y: np.ndarray, t: pb.TrainingSpec, callbacks: list[Any]) -> float:
    """Fits ``model`` (its pruning wrappers stepped by UpdatePruningStep); returns the seconds."""
    started = time.monotonic()
    checkpoints = _CURRENT.get()
    initial_epoch = 0
    callbacks = list(callbacks)
    if hasattr(model.optimizer, "build"):
        # Its slots made now: a checkpoint restores into them, and made by the first step, inside
        # the trace of the training function, they had tf.function trace it a second time
        model.optimizer.build(model.trainable_variables)
    if checkpoints is not None:
        history = next((c for c in callbacks if isinstance(c, HistoryCallback)), None)
        try:
            initial_epoch = _resume(model, checkpoints, t.epochs, history)
        except (tf.errors.OpError, AssertionError, ValueError, KeyError) as exc:
            log.warning("the checkpoint in %s does not fit this model (%s); starting over", checkpoints.directory, exc)
            checkpoints.clear()
        callbacks.append(_Checkpoint(checkpoints, history))
    validation = None
    if t.validation_split > 0:
        # Keras' own split, made here under a host device: inside fit, the slices of the job's
        # host tensors (inputs.as_tensors) would be eager ops placed on a GPU, holding the whole
        # training split in its memory; the batches go there as they are trained on instead
        with tf.device("/CPU:0"):
            (x, y), validation = data_adapter.train_validation_split((x, y), t.validation_split)
    with tferrors.step("fine-tuning"):
        model.fit(
            x,
            y,
            batch_size=t.batch_size,
            epochs=t.epochs,
            initial_epoch=initial_epoch,
            validation_data=validation,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *callbacks],
            verbose=0,
        )
    return time.monotonic() - started
