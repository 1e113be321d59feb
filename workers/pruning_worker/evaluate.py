"""Evaluation of a model on the job's test split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pruning.v1 import pruning_pb2 as pb
from pruning_core import validation

from . import tferrors


def metrics(loss: str) -> list[str]:
    """What a model is compiled to measure beside ``loss``: accuracy, except under a
    regression loss, where there is none."""
    return [] if validation.is_regression(loss) else ["accuracy"]


def accuracy(figures: Mapping[str, Any], prefix: str = "") -> float | None:
    """The accuracy in Keras's figures (a fit's logs, evaluate's dict): ``accuracy``, or for a
    model of several outputs the mean of its outputs' ``<output>_accuracy``; ``prefix="val_"``
    for the validation figures. None when there is none (a regression loss)."""
    if f"{prefix}accuracy" in figures:
        return float(figures[f"{prefix}accuracy"])
    values = [
        float(v)
        for k, v in figures.items()
        if k.endswith("_accuracy") and (k.startswith(prefix) if prefix else not k.startswith("val_"))
    ]
    return sum(values) / len(values) if values else None


def evaluate(model: Any, x: Any, y: Any, t: pb.TrainingSpec, what: str) -> pb.Metrics:
    """Loss and accuracy (none under a regression loss) of a compiled ``model``; ``what`` names
    the step in errors. Several outputs: the total loss, and the mean of the outputs' accuracies."""
    with tferrors.step(what):
        figures = model.evaluate(x, y, batch_size=t.batch_size, verbose=0, return_dict=True)
    return pb.Metrics(loss=float(figures["loss"]), accuracy=accuracy(figures))
