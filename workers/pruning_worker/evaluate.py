"""Evaluation of a model on the job's test split."""

from __future__ import annotations

from typing import Any

from pruning.v1 import pruning_pb2 as pb

from . import tferrors


def evaluate(model: Any, x: Any, y: Any, t: pb.TrainingSpec, what: str) -> pb.Metrics:
    """Loss and accuracy of a compiled ``model``; ``what`` names the step in errors."""
    with tferrors.step(what):
        figures = model.evaluate(x, y, batch_size=t.batch_size, verbose=0, return_dict=True)
    # Several outputs: the total loss, and the mean of the outputs' accuracies.
    accuracies = [float(v) for k, v in figures.items() if k == "accuracy" or k.endswith("_accuracy")]
    return pb.Metrics(loss=float(figures["loss"]), accuracy=sum(accuracies) / len(accuracies) if accuracies else 0.0)
