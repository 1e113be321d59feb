"""Evaluation of a model on the job's test split."""

from __future__ import annotations

from typing import Any

import numpy as np

from pruning.v1 import pruning_pb2 as pb

from . import tferrors


def evaluate(model: Any, x: np.ndarray, y: np.ndarray, t: pb.TrainingSpec, what: str) -> pb.Metrics:
    """Loss and accuracy of a compiled ``model``; ``what`` names the step in errors."""
    with tferrors.step(what):
        loss, accuracy = model.evaluate(x, y, batch_size=t.batch_size, verbose=0)
    return pb.Metrics(loss=float(loss), accuracy=float(accuracy))
