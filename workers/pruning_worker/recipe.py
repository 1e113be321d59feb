"""The spec translated for TFMOT and Keras: schedule, pruned layers, loss and optimizer."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

from pruning.v1 import pruning_pb2 as pb
from pruning_core import validation
from pruning_core.plan import train_steps
from pruning_core.validation import target_sparsity

from .errors import JobInputError

__all__ = [
    "Schedule",
    "apply_pruning",
    "make_loss",
    "make_optimizer",
    "make_schedule",
    "scheduled_sparsity",
    "target_sparsity",
    "train_steps",
]

Schedule = Any  # a tfmot.sparsity.keras.PruningSchedule (TFMOT ships no type hints)


def make_schedule(p: pb.PruningSpec, last_step: int) -> Schedule:
    which = p.schedule.WhichOneof("schedule")
    s = getattr(p.schedule, which or "polynomial_decay")
    end = s.end_step or last_step
    if end <= s.begin_step:
        raise JobInputError(f"spec.pruning.schedule: end step {end} is not after begin step {s.begin_step}")
    if which == "constant_sparsity":
        return tfmot.sparsity.keras.ConstantSparsity(s.target_sparsity, s.begin_step, end, s.frequency)
    return tfmot.sparsity.keras.PolynomialDecay(
        s.initial_sparsity, s.final_sparsity, s.begin_step, end, s.power, s.frequency
    )


def scheduled_sparsity(schedule: Schedule | None, step: int) -> float:
    """The target sparsity ``schedule`` sets at ``step`` (0 before its begin step, and 0
    without a schedule: structured pruning only), asked of the schedule object itself."""
    if schedule is None or step < schedule.get_config()["config"]["begin_step"]:
        return 0.0
    _, sparsity = schedule(tf.constant(step, dtype=tf.int64))
    return float(sparsity)


def _prunable(layer: keras.layers.Layer) -> bool:
    """A layer with weights TFMOT prunes: supported, and not one it only lets through
    (DepthwiseConv2D, BatchNormalization, ... are supported with nothing to prune)."""
    if not layer.trainable_weights:
        return False
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        return True
    registry = prune_registry.PruneRegistry
    if not registry.supports(layer):
        return False
    return registry._is_rnn_layer(layer) or bool(registry._LAYERS_WEIGHTS_MAP.get(layer.__class__))


def apply_pruning(model: keras.Model, p: pb.PruningSpec, schedule: Schedule) -> tuple[keras.Model, list[str]]:
    """Wraps the selected prunable layers; returns the model and the wrapped layer names."""
    params: dict[str, Any] = {
        "pruning_schedule": schedule,
        "block_size": tuple(p.block_size),
        "block_pooling_type": "MAX" if p.block_pooling_type == pb.BLOCK_POOLING_TYPE_MAX else "AVG",
    }
    if p.HasField("sparsity_m_by_n"):
        params["sparsity_m_by_n"] = (p.sparsity_m_by_n.m, p.sparsity_m_by_n.n)
    # The server checks this at CreateJob when it knows the layers; exports carry no layer list.
    layers = [(type(layer).__name__, layer.name) for layer in model.layers]
    violations = validation.validate_against_model(pb.JobSpec(pruning=p), layers)
    if violations:
        raise JobInputError("; ".join(f"{field}: {text}" for field, text in violations))
    chosen = [
        layer.name
        for layer in model.layers
        if validation.selected(type(layer).__name__, layer.name, p.layers) and _prunable(layer)
    ]
    if not chosen:
        raise JobInputError("spec.pruning.layers: selects no prunable layer (Dense, Conv, ...)")
    if p.policy == pb.PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK:
        params["pruning_policy"] = tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
        try:
            return tfmot.sparsity.keras.prune_low_magnitude(model, **params), chosen
        except (ValueError, TypeError) as exc:
            raise JobInputError(f"spec.pruning.policy: {exc}") from None

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return tfmot.sparsity.keras.prune_low_magnitude(layer, **params) if layer.name in chosen else layer

    try:
        pruned = keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError) as exc:
        raise JobInputError(f"spec.pruning: {exc}") from None
    return pruned, chosen


_LOSSES = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
}


def make_loss(name: str) -> Any:
    base = name.removesuffix("_from_logits")
    if base in _LOSSES:
        return _LOSSES[base](from_logits=name.endswith("_from_logits"))
    return keras.losses.get(name)


def make_optimizer(t: pb.TrainingSpec) -> Any:
    config = {"learning_rate": t.learning_rate} if t.learning_rate else {}
    return keras.optimizers.get({"class_name": t.optimizer, "config": config})
