"""Fine-tuning of the pruned model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import tensorflow_model_optimization as tfmot

from pruning.v1 import pruning_pb2 as pb

from . import tferrors


def fine_tune(model: Any, x: np.ndarray, y: np.ndarray, t: pb.TrainingSpec, callbacks: list[Any]) -> float:
    """Fits ``model`` (its pruning wrappers stepped by UpdatePruningStep); returns the seconds."""
    started = time.monotonic()
    with tferrors.step("fine-tuning"):
        model.fit(
            x,
            y,
            batch_size=t.batch_size,
            epochs=t.epochs,
            validation_split=t.validation_split,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *callbacks],
            verbose=0,
        )
    return time.monotonic() - started
