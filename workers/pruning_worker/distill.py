"""Knowledge distillation from the model as uploaded, without a Model subclass.

The teacher's outputs on the training data are computed once, before pruning touches the
model, and packed beside the labels: ``y = [label, teacher logits ...]``. A loss and an
accuracy metric that read those columns let ``model.fit`` (with TFMOT's UpdatePruningStep, the
validation split, checkpoints and every callback) run unchanged:

    loss = alpha * task loss + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

Only single-output classifiers with integer labels qualify; :func:`prepare` says why not
otherwise, and the job fine-tunes on the task loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from . import tferrors

__all__ = ["MAX_TEACHER_BYTES", "Distillation", "prepare"]

MAX_TEACHER_BYTES = 1 << 30  # teacher outputs held in memory beside the training data


def _logits(outputs: Any, from_logits: bool) -> Any:
    """Outputs as logits: probabilities become their logarithms (equal up to a constant)."""
    if from_logits:
        return outputs
    return tf.math.log(tf.clip_by_value(outputs, 1e-7, 1.0))


class DistillationLoss(keras.losses.Loss):
    def __init__(self, alpha: float, temperature: float, from_logits: bool, name: str = "distillation"):
        super().__init__(name=name)
        self.alpha, self.temperature, self.from_logits = alpha, temperature, from_logits

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = tf.cast(y_true[:, 0], tf.int64)
        teacher = tf.cast(y_true[:, 1:], y_pred.dtype)
        task = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=self.from_logits)
        t = self.temperature
        soft_teacher = tf.nn.softmax(teacher / t)
        kl = tf.reduce_sum(
            soft_teacher * (tf.nn.log_softmax(teacher / t) - tf.nn.log_softmax(_logits(y_pred, self.from_logits) / t)),
            axis=-1,
        )
        return self.alpha * task + (1.0 - self.alpha) * t * t * kl

    def get_config(self) -> dict:
        return {
            "alpha": self.alpha,
            "temperature": self.temperature,
            "from_logits": self.from_logits,
            "name": self.name,
        }


class LabelAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """Accuracy against the label column of a packed target (named "accuracy" like Keras's)."""

    def __init__(self, name: str = "accuracy", **kwargs: Any):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        return super().update_state(y_true[:, :1], y_pred, sample_weight)


@dataclass
class Distillation:
    """What fine-tuning uses instead of the plain labels and loss."""

    targets: np.ndarray  # [label, teacher outputs as logits ...] per training sample
    loss: DistillationLoss

    def metrics(self) -> list[Any]:
        return [LabelAccuracy()]


def prepare(
    teacher: Any, x: Any, y: Any, loss_name: str, alpha: float, temperature: float, batch_size: int
) -> Distillation | str:
    """The packed targets and loss, or why this model and data cannot distill."""
    if not loss_name.startswith("sparse_categorical_crossentropy"):
        return f"the loss is {loss_name}, not a sparse categorical cross-entropy"
    if len(teacher.outputs) != 1:
        return f"the model has {len(teacher.outputs)} outputs; distillation takes one"
    if not isinstance(y, np.ndarray) or y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
        return "the labels are not one integer class per sample"
    shape = teacher.outputs[0].shape
    if len(shape) != 2 or not shape[-1] or shape[-1] < 2:
        return f"the model's output has shape {tuple(shape)}, not (batch, classes)"
    if len(y) * (shape[-1] + 1) * 4 > MAX_TEACHER_BYTES:
        return f"the teacher's outputs on {len(y)} samples would take over {MAX_TEACHER_BYTES >> 20} MiB"
    from_logits = loss_name.endswith("_from_logits")
    # the first pass over the training data: a value the model cannot take (a token id past the
    # Embedding's size) fails here, as an input error naming its cause, not as INTERNAL
    with tferrors.step("distillation (the teacher's outputs on the training data)"):
        outputs = teacher.predict(x, batch_size=max(batch_size, 256), verbose=0)
    logits = np.asarray(_logits(tf.constant(outputs, tf.float32), from_logits), dtype=np.float32)
    targets = np.concatenate([y.reshape(-1, 1).astype(np.float32), logits], axis=1)
    return Distillation(targets, DistillationLoss(alpha, temperature, from_logits))
