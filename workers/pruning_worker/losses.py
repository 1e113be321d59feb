"""The job's loss: one for every output, or one per output (``TrainingSpec.output_losses``).

Keras takes either one loss for all outputs or one per output, by the outputs' keys for a
model of dict outputs and otherwise as a list in the outputs' order (the order in which
:func:`~pruning_worker.inputs.by_output` hands the targets: pruning wraps, and so renames,
the output layers a dict would be matched against). The metrics follow the same shape:
accuracy for the outputs of a classification loss, nothing for a regression's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from pruning.v1 import pruning_pb2 as pb
from pruning_core import validation

from .errors import JobInputError
from .evaluate import metrics
from .inputs import output_keys
from .recipe import make_loss


@dataclass(frozen=True)
class JobLoss:
    names: dict[str, str]  # each output's loss name, in the outputs' order
    keys: bool  # the model's outputs are a dict: per-output arguments go by key, not by position

    @classmethod
    def of(cls, model: Any, t: pb.TrainingSpec) -> JobLoss:
        keys = output_keys(model)
        outputs = keys if keys is not None else list(model.output_names)
        if unknown := sorted(set(t.output_losses) - set(outputs)):
            raise JobInputError(
                f"spec.training.output_losses: {unknown[:20]} name no output of the model; its outputs are {outputs}"
            )
        return cls({name: validation.output_loss(t, name) for name in outputs}, keys is not None)

    @property
    def single(self) -> str | None:
        """The one loss of every output, or None when they differ."""
        distinct = set(self.names.values())
        return distinct.pop() if len(distinct) == 1 else None

    def _per_output(self, make: Any) -> Any:
        if (only := self.single) is not None:
            return make(only)
        if self.keys:
            return {name: make(loss) for name, loss in self.names.items()}
        return [make(loss) for loss in self.names.values()]

    def keras_loss(self) -> Any:
        """``compile``'s loss argument."""
        return self._per_output(make_loss)

    def keras_metrics(self) -> Any:
        """``compile``'s metrics argument: accuracy where the output's loss has one."""
        return self._per_output(metrics)

    @property
    def has_accuracy(self) -> bool:
        return any(not validation.is_regression(loss) for loss in self.names.values())

    def function(self) -> Any:
        """``loss(y, predictions)`` summed over the outputs, for what computes the loss itself
        (the sensitivity scan, Taylor importance): targets and predictions as a single
        tensor, a list in the outputs' order, or a dict by key."""
        fns = self.keras_loss()

        def mean(fn: Any, target: Any, prediction: Any) -> Any:
            # a tensor, so the Loss object squeezes (n,) against (n, 1) as compile does
            return tf.reduce_mean(fn(tf.convert_to_tensor(target), prediction))

        def loss(y: Any, predictions: Any) -> Any:
            if isinstance(y, dict):
                return tf.add_n([mean(fns[k] if isinstance(fns, dict) else fns, y[k], predictions[k]) for k in y])
            if isinstance(y, (list, tuple)):
                each = fns if isinstance(fns, list) else [fns] * len(y)
                return tf.add_n([mean(f, t, p) for f, t, p in zip(each, y, predictions, strict=True)])
            return mean(fns, y, predictions)

        return loss
