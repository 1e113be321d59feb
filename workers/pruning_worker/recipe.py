"""The spec translated for TFMOT and Keras: schedule, pruned layers, loss and optimizer."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry, pruning_wrapper

from pruning.v1 import pruning_pb2 as pb
from pruning_core import defaults, preflight, validation
from pruning_core import recipe as core_recipe
from pruning_core.plan import train_steps
from pruning_core.validation import target_sparsity

from .errors import JobInputError, OutcomeError
from .measure import kernels, layer_named
from .tferrors import root_cause

__all__ = [
    "MaskedPruneLowMagnitude",
    "Schedule",
    "apply_pruning",
    "check_target",
    "describe",
    "final_step",
    "for_layer",
    "layer_targets",
    "learning_rate",
    "make_loss",
    "make_optimizer",
    "make_schedule",
    "scheduled_sparsity",
    "selected_layers",
    "target_sparsity",
    "train_steps",
]

Schedule = Any  # a tfmot.sparsity.keras.PruningSchedule (TFMOT ships no type hints)


def make_schedule(p: pb.PruningSpec, last_step: int) -> Schedule:
    which = p.schedule.WhichOneof("schedule")
    s = getattr(p.schedule, which or "polynomial_decay")
    # CreateJob resolves end step and frequency (pruning_core.recipe); older records may not.
    end = s.end_step or last_step
    frequency = s.frequency or defaults.FREQUENCY
    if end <= s.begin_step:
        raise JobInputError(f"spec.pruning.schedule: end step {end} is not after begin step {s.begin_step}")
    if which == "constant_sparsity":
        return tfmot.sparsity.keras.ConstantSparsity(s.target_sparsity, s.begin_step, end, frequency)
    return tfmot.sparsity.keras.PolynomialDecay(
        s.initial_sparsity, s.final_sparsity, s.begin_step, end, s.power or defaults.POWER, frequency
    )


def for_layer(schedule: Schedule, final: float) -> Schedule:
    """``schedule`` ending at ``final`` instead (its initial sparsity capped at ``final``)."""
    c = schedule.get_config()["config"]
    if isinstance(schedule, tfmot.sparsity.keras.ConstantSparsity):
        return tfmot.sparsity.keras.ConstantSparsity(final, c["begin_step"], c["end_step"], c["frequency"])
    return tfmot.sparsity.keras.PolynomialDecay(
        min(c["initial_sparsity"], final), final, c["begin_step"], c["end_step"], c["power"], c["frequency"]
    )


def layer_targets(p: pb.PruningSpec, layers: list[str], model: keras.Model | None = None) -> dict[str, float]:
    """The final sparsity of each pruned layer: its own where the spec gives one; under
    m-by-n sparsity what the pattern leaves of the layer's kernels (given ``model``)."""
    if p.HasField("sparsity_m_by_n") and model is not None:
        return {name: m_by_n_sparsity(layer_named(model, name), p.sparsity_m_by_n) for name in layers}
    target = target_sparsity(p)
    return {name: p.layer_sparsity.get(name, target) for name in layers}


def _input_channels(w: np.ndarray) -> int:
    """The axis m-by-n groups run along, as TFMOT lays a 2-D or 4-D kernel out."""
    return int(w.shape[0] if w.ndim == 2 else w.shape[2])


def m_by_n_sparsity(layer: keras.layers.Layer, mn: pb.SparsityMByN) -> float:
    """The zero share m-by-n sparsity gives the layer's kernels: TFMOT zeroes m of every n
    consecutive input-channel weights, and of a last group shorter than n (the input channels
    not a multiple of n) only what exceeds n - m."""
    zeros = size = 0
    for w in kernels(layer):
        cols = _input_channels(w)
        rows = w.size // cols
        zeros += rows * validation.m_by_n_zeros(cols, mn)
        size += w.size
    return zeros / size if size else 0.0


def check_shapes(model: keras.Model, p: pb.PruningSpec, chosen: list[str]) -> list[str]:
    """Refuses before fine-tuning a pattern the chosen layers' kernels cannot take (TFMOT
    fails on it only at the first mask update): m-by-n sparsity on a kernel neither 2-D nor
    4-D, a block not smaller than a kernel on each side. Returns what to warn of: layers with fewer input
    channels than n - m + 1, which m-by-n sparsity leaves dense."""
    block, notes = list(p.block_size), []
    for name in chosen:
        layer = model.get_layer(name)
        if p.HasField("sparsity_m_by_n") and layer.dtype != "float32":  # TFMOT's masks are float32
            raise JobInputError(
                f"spec.pruning.sparsity_m_by_n: takes layers computing in float32 only; exclude the layer {name} "
                f"({layer.dtype}) or save it with the float32 dtype policy"
            )
        for w in kernels(layer):
            what = f"layer {name} ({type(layer).__name__}, kernel {tuple(w.shape)})"
            if p.HasField("sparsity_m_by_n"):
                mn = p.sparsity_m_by_n
                if w.ndim not in (2, 4):
                    raise JobInputError(
                        f"spec.pruning.sparsity_m_by_n: {what}: takes 2-D (Dense) and 4-D (Conv2D) kernels only"
                    )
                if note := validation.m_by_n_leaves_dense(what, _input_channels(w), mn):
                    notes.append(note)
            # TFMOT pools the kernel by blocks and fails where a pooled side is 1 (it squeezes it)
            if block not in ([], [1, 1]) and w.ndim == 2 and (block[0] >= w.shape[0] or block[1] >= w.shape[1]):
                raise JobInputError(
                    f"spec.pruning.block_size: {block} is not smaller than the kernel of {what} on each side: "
                    "exclude the layer or take a smaller block"
                )
    return notes


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
    if getattr(layer, "activity_regularizer", None) is not None:
        return False  # TFMOT's wrapper cannot carry it (preflight.left_whole says so)
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        return True
    registry = prune_registry.PruneRegistry
    if not registry.supports(layer):
        return False
    return registry._is_rnn_layer(layer) or bool(registry._LAYERS_WEIGHTS_MAP.get(layer.__class__))


def selected_layers(model: keras.Model, p: pb.PruningSpec) -> list[str]:
    """The layers the spec prunes: selected by name or type, and prunable."""
    return [
        layer.name
        for layer in model.layers
        if validation.selected(type(layer).__name__, layer.name, p.layers) and _prunable(layer)
    ]


class MaskedPruneLowMagnitude(pruning_wrapper.PruneLowMagnitude):
    """TFMOT's pruning wrapper, passing Keras masks (``Embedding(mask_zero=True)``,
    ``Masking``) through as the wrapped layer does. TFMOT's own drops the mask the layer
    computes, so fine-tuning and evaluation ran without the padding mask the stripped model
    applies again, and hands a mask to layers whose ``call`` takes none (a TypeError)."""

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any):
        super().__init__(layer, **kwargs)
        self.supports_masking = layer.supports_masking
        self._takes_mask = "mask" in inspect.signature(layer.call).parameters

    def call(self, inputs: Any, training: Any = None, mask: Any = None, **kwargs: Any) -> Any:
        if mask is not None and self._takes_mask:
            kwargs["mask"] = mask
        return super().call(inputs, training=training, **kwargs)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        # A layer that does not support masking ends the mask, as it does unwrapped.
        return self.layer.compute_mask(inputs, mask) if self.layer.supports_masking else None


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
    chosen = selected_layers(model, p)
    if not chosen:
        raise JobInputError("spec.pruning.layers: selects no prunable layer (Dense, Conv, ...)")
    check_shapes(model, p, chosen)  # raises; the pipeline logs what it warns of
    if p.policy == pb.PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK:
        params["pruning_policy"] = tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
        try:
            return tfmot.sparsity.keras.prune_low_magnitude(model, **params), chosen
        except (ValueError, TypeError) as exc:
            # the layers the bridge made of Keras 3's Activation("hard_silu") are none the user has
            scale = preflight.HARD_SIGMOID_PARTS[0]
            made = sorted(layer.name.removesuffix(scale) for layer in model.layers if layer.name.endswith(scale))
            why = (
                f" (Keras 3's hard_sigmoid / hard_silu Activation layers {', '.join(made[:5])} are translated as "
                "Rescaling, ReLU and Multiply layers; use the default policy)"
                if made
                else ""
            )
            raise JobInputError(f"spec.pruning.policy: {exc}{why}") from None

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name not in chosen:
            return layer
        if layer.name in p.layer_sparsity:
            final = p.layer_sparsity[layer.name]
            return MaskedPruneLowMagnitude(layer, **(params | {"pruning_schedule": for_layer(schedule, final)}))
        return MaskedPruneLowMagnitude(layer, **params)

    try:
        pruned = keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError) as exc:
        mixed = sorted(layer.name for layer in model.layers if "mixed" in getattr(layer.dtype_policy, "name", ""))
        hint = f" (layers {', '.join(mixed)} compute in mixed precision, which pruning does not take)" if mixed else ""
        raise JobInputError(
            f"spec.pruning: the layers cannot be wrapped for pruning{hint}: {root_cause(exc)}"
        ) from None
    return pruned, chosen


_LOSSES = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
}
# Loss objects, not keras.losses.get's bare functions: called directly (the sensitivity scan,
# Taylor importance) they squeeze a target of shape (n,) against an output of (n, 1) as
# compile does, where the function would broadcast them to (n, n).
_REGRESSION_LOSSES = {
    "mean_squared_error": keras.losses.MeanSquaredError,
    "mean_absolute_error": keras.losses.MeanAbsoluteError,
}


def make_loss(name: str) -> Any:
    base = name.removesuffix("_from_logits")
    if base in _LOSSES:
        return _LOSSES[base](from_logits=name.endswith("_from_logits"))
    if name in _REGRESSION_LOSSES:
        return _REGRESSION_LOSSES[name]()
    return keras.losses.get(name)


def make_optimizer(t: pb.TrainingSpec, total_steps: int = 0) -> Any:
    """The spec's optimizer at its learning rate, decayed to a tenth over ``total_steps`` by a
    cosine when the spec asks for decay (the recipe's choices are in the spec)."""
    rate: Any = t.learning_rate or None
    if rate and t.learning_rate_decay and total_steps > 1:
        rate = keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=total_steps, alpha=0.1)
    config: dict[str, Any] = {"learning_rate": rate} if rate else {}
    if t.optimizer.lower() in _CURRENT_ONLY:
        # A configuration without "is_legacy_optimizer" is read as a legacy optimizer's, which
        # has no AdamW ("Unknown optimizer") and a Nadam that refuses a decay schedule: these
        # two are the current implementations (the others stay as every job has had them).
        config["is_legacy_optimizer"] = False
    return keras.optimizers.get({"class_name": t.optimizer, "config": config})


_CURRENT_ONLY = ("adamw", "nadam")


def learning_rate(optimizer: Any) -> float:
    """The optimizer's learning rate now (its schedule asked at the current iteration)."""
    rate = optimizer.learning_rate
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(optimizer.iterations)
    return float(keras.backend.get_value(rate))


SPARSITY_TOLERANCE = defaults.SPARSITY_TOLERANCE


def final_step(p: pb.PruningSpec) -> int:
    """The step at which the schedule applies its final sparsity (0 without a schedule)."""
    which = p.schedule.WhichOneof("schedule")
    if which is None:
        return 0
    s = getattr(p.schedule, which)
    return s.begin_step if which == "constant_sparsity" else s.end_step


def describe(
    spec: pb.JobSpec, history: list[pb.EpochSummary], stopper: Any, distilled: bool = False
) -> pb.RecipeResult:
    """The recipe as it ran: its resolved choices, the epochs run and the epoch kept."""
    t, p = spec.training, spec.pruning
    which = p.schedule.WhichOneof("schedule")
    s = getattr(p.schedule, which) if which else None
    kept = len(history)
    if stopper is not None and stopper.stopped_epoch > 0 and stopper.best_epoch is not None:
        kept = stopper.best_epoch + 1  # restore_best_weights put that epoch's weights back
    return pb.RecipeResult(
        recipe=t.recipe or pb.RECIPE_KEEP_ACCURACY,
        name=core_recipe.name(t.recipe),
        schedule_begin_step=s.begin_step if s else 0,
        schedule_end_step=s.end_step if s else 0,
        schedule_frequency=s.frequency if s else 0,
        learning_rate=t.learning_rate,
        learning_rate_decay=t.learning_rate_decay,
        early_stopping_patience=t.early_stopping_patience if stopper is not None else 0,
        epochs_run=len(history),
        best_epoch=kept,
        distillation=distilled,
        distillation_alpha=t.distillation_alpha if distilled else 0.0,
        distillation_temperature=t.distillation_temperature if distilled else 0.0,
    )


DIVERGED_FACTOR = 1000.0  # a loss this many times its starting value: the training diverged


def diverged(result: pb.PruneResult) -> str | None:
    """How the fine-tuning's loss says it diverged (not finite, or DIVERGED_FACTOR times the
    baseline's test loss, else the first epoch's), or None."""
    losses = [epoch.loss for epoch in result.history]
    if result.HasField("pruned"):
        losses.append(result.pruned.loss)
    start = result.baseline.loss if result.HasField("baseline") and result.baseline.loss > 0 else None
    if start is None and result.history and result.history[0].loss > 0:
        start = result.history[0].loss
    for loss in losses:
        if not math.isfinite(loss):
            return f"its loss became {loss}"
        if start is not None and loss > DIVERGED_FACTOR * start:
            return f"its loss went from {start:.4g} to {loss:.4g}"
    return None


def check_target(result: pb.PruneResult, p: pb.PruningSpec, uploaded: dict[str, float] | None = None) -> str | None:
    """Fails the job when the pruned kernels miss the target sparsity by more than
    SPARSITY_TOLERANCE, beyond what rounding to whole blocks allows (TFMOT keeps a whole number
    of blocks, or of m-by-n groups, per layer). Kernels sparser than the target pass where the
    zeros the layers had as uploaded (``uploaded``, by layer) account for it: a model pruned
    before, or with units no gradient reaches, keeps its zeros. Returns what to tell of that."""
    pruned = [layer for layer in result.layers if layer.pruned]
    weights = sum(layer.weights for layer in pruned)
    if not pruned or not weights:
        return None
    # The layers' own targets, weighted by their size: the schedule's target unless the spec
    # (or the recipe) gave a layer its own.
    target = sum(layer.target_sparsity * layer.weights for layer in pruned) / weights
    unit = p.sparsity_m_by_n.n if p.HasField("sparsity_m_by_n") else max(1, int(np.prod(list(p.block_size) or [1])))
    allowance = SPARSITY_TOLERANCE + unit * len(pruned) / weights
    measured = result.pruned_kernel_sparsity
    if math.isfinite(measured) and measured > target + allowance and uploaded:
        had = {layer.name: uploaded.get(layer.name, 0.0) for layer in pruned}
        ceiling = sum(max(layer.target_sparsity, had[layer.name]) * layer.weights for layer in pruned) / weights
        # every layer at its own target at least: one's zeros never hide another's shortfall
        if measured <= ceiling + allowance and all(x.sparsity >= x.target_sparsity - allowance for x in pruned):
            sparse = sorted((n for n in had if had[n] > 0), key=lambda n: -had[n])
            return (
                f"the pruned kernels are {measured:.4f} sparse, above the target {target:.4f}: the model came "
                "with zeros of its own, which fine-tuning kept ("
                + ", ".join(f"{n} {had[n]:.4f} sparse as uploaded" for n in sparse[:5])
                + (", ..." if len(sparse) > 5 else "")
                + ")"
            )
    if not math.isfinite(measured) or abs(measured - target) > allowance:
        if (blown := diverged(result)) is not None:
            raise OutcomeError(
                f"the fine-tuning diverged: {blown}, and weights blown up so far leave the masks no meaning (the "
                f"kernels are {measured:.4f} sparse, the target {target:.4f}); lower the learning rate"
            )
        short = [
            x for x in pruned if x.sparsity < x.target_sparsity - allowance
        ]  # what missed, before what came sparse
        worst = max(short or pruned, key=lambda layer: abs(layer.sparsity - layer.target_sparsity))
        raise OutcomeError(
            f"the pruned kernels are {measured:.4f} sparse, the target is {target:.4f} (tolerance "
            f"{allowance:.4f}); furthest off: layer {worst.name} at {worst.sparsity:.4f} for "
            f"{worst.target_sparsity:.4f}. Check that a mask "
            "update falls on the schedule's end step and that the fine-tuning ran to it"
        )
    return None


# Pruned accuracy within this of chance (the most frequent label's share) is chance level.
CHANCE_MARGIN = 0.02


def chance_level_note(pruned: float, baseline: float, y_test: Any, binary: bool = False) -> str | None:
    """What to warn of when the pruned model's test accuracy fell to chance (the share of the
    most frequent test label) from a baseline well above it: a job asked for 0.999 sparsity
    SUCCEEDED at 0.11 on MNIST with nothing said. None otherwise, or for labels that are not one
    class per sample (several outputs, sequences). With ``binary`` (the accuracy is the binary
    accuracy of each unit, under a binary cross-entropy) chance is the mean over the units of
    the share of their most frequent value."""
    if isinstance(y_test, dict | list | tuple):  # a model of several outputs
        return None
    labels = np.asarray(y_test)
    if binary:
        if labels.ndim not in (1, 2) or not len(labels):
            return None
        ones = np.mean(labels.reshape(len(labels), -1) > 0.5, axis=0)
        chance = float(np.mean(np.maximum(ones, 1.0 - ones)))
        share = "the share of each unit's most frequent test label"
    else:
        if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
            labels = labels.argmax(axis=1)
        elif labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or not len(labels):
            return None
        chance = float(np.unique(labels, return_counts=True)[1].max() / len(labels))
        share = "the most frequent test label's share"
    if pruned > chance + CHANCE_MARGIN or baseline < chance + 5 * CHANCE_MARGIN:
        return None
    return (
        f"the pruned model's test accuracy {pruned:.4f} is at chance level ({chance:.4f}: {share}), down from "
        f"{baseline:.4f}: this sparsity removed what the model computed; prune less, or give an accuracy budget to "
        "find the highest sparsity that keeps it"
    )
