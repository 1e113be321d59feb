"""Evaluation of a model on the job's test split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pruning.v1 import pruning_pb2 as pb
from pruning_core import validation

from . import tferrors


def metrics(loss: str) -> list[Any]:
    """What a model is compiled to measure beside ``loss``: accuracy, except under a
    regression loss, where there is none. Under a binary cross-entropy it is the binary
    accuracy of each unit (named "accuracy" still), thresholded at a probability of 0.5: at a
    logit of 0 for the loss from logits. Keras's "accuracy" picks its metric by the shapes
    alone: on an output of logits it thresholded the logits at 0.5 (a logit of 0.3 is a
    probability of 0.57, counted as class 0), and on several units (multi-label) it compared
    the argmax of the labels with the argmax of the outputs."""
    if validation.is_regression(loss):
        return []
    if loss.startswith("binary_crossentropy"):
        import tf_keras as keras

        threshold = 0.0 if loss.endswith("_from_logits") else 0.5
        return [keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold)]
    return ["accuracy"]


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
