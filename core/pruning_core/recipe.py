"""The fine-tuning recipe, resolved at CreateJob against the job's real step count and written
into the spec, so the stored spec says what runs and the worker follows it without choices of
its own. No TensorFlow.

KEEP_ACCURACY (the default) reaches the final sparsity at about half of the steps and
recovers at it for the rest. TFMOT updates the masks only on steps ``begin + k * frequency``
up to ``end_step`` (steps count from 0, so the last one is ``total - 1``): the end step is put
on such a step, or the final sparsity is never applied. The learning rate starts at twice the
optimizer's default and a cosine takes it down to a tenth of that, so the masked model moves far
while the sparsity rises and settles while it recovers (measured on the seed CNN: a third of
the default lost 0.75 pp at 90% where the default lost 0.34; at 95% with distillation over 30
epochs, twice the default and the final sparsity at half the steps lost 0.96 pp where the
default at two thirds lost 1.02); training stops early on validation accuracy once the final
sparsity holds. A classifier with a sparse categorical cross-entropy
loss also distills from the model as uploaded (alpha 0.5, temperature 4; the worker checks the
model has one output and integer labels).
Unless the client gives a power, the PolynomialDecay runs at power 5, putting most of the
sparsity early in the ramp (on the seed CNN at 95% over 30 epochs, seeds 1-3 through the
service: 0.67 / 0.94 / 0.72 pp lost against 0.93 / 1.11 / 1.10 at TFMOT's 3).
PLAIN is the TFMOT guide's recipe. Whatever the client set explicitly is kept.
"""

from __future__ import annotations

import math

from pruning.v1 import pruning_pb2 as pb

from . import defaults, validation

__all__ = ["DEFAULT_LEARNING_RATES", "allocate", "name", "patience", "resolve", "steps_reaching_final"]

# Keras's defaults for each optimizer the service offers.
DEFAULT_LEARNING_RATES = {
    "adam": 1e-3,
    "adamw": 1e-3,
    "nadam": 1e-3,
    "rmsprop": 1e-3,
    "adagrad": 1e-3,
    "sgd": 1e-2,
}
FINE_TUNE_LR_FACTOR = 2.0
KEEP_POWER = 5.0  # of PolynomialDecay, when the client leaves it: most of the sparsity early
RECOVERY_FRACTION = 1 / 2  # of the steps spent at the final sparsity
MASK_UPDATES = 10  # in the ramp, when the frequency is left to the recipe
PATIENCE, PATIENCE_SHARE = 2, 0.2  # epochs without progress: at least 2, a fifth of the epochs
DISTILLATION_ALPHA, DISTILLATION_TEMPERATURE = 0.5, 4.0
SMALL_LAYER_SHARE = 0.05
SMALL_LAYER_SPARSITY = 0.5
MAX_LAYER_SPARSITY = 0.99


def patience(epochs: int) -> int:
    """Epochs without a better validation accuracy before stopping: a fifth of the epochs, at
    least PATIENCE. The decaying rate keeps improving a long run slowly (on the seed CNN at 95%
    over 30 epochs through the service, seeds 1-3: a patience of 2 stopped at epochs 18-21 and
    lost 0.96 / 1.18 / 1.10 pp, a patience of 6 ran 25-30 epochs and lost 0.93 / 1.11 / 1.10)."""
    return max(PATIENCE, math.ceil(PATIENCE_SHARE * epochs))


def name(recipe: int) -> str:
    return "plain" if recipe == pb.RECIPE_PLAIN else "keep_accuracy"


def _aligned_end(begin: int, goal: int, frequency: int, last: int) -> int:
    """The mask-update step nearest below ``goal`` (and no later than ``last``)."""
    k = max(1, (min(goal, last) - begin) // frequency)
    while begin + k * frequency > last and k > 1:
        k -= 1
    return begin + k * frequency


def _frequency_for(span: int) -> int:
    """About MASK_UPDATES updates over ``span`` steps, at most every defaults.FREQUENCY."""
    return max(1, min(defaults.FREQUENCY, span // MASK_UPDATES))


def _divisor_near(span: int, wanted: int) -> int:
    """The divisor of ``span`` closest to ``wanted`` from below (1 at worst)."""
    for f in range(min(wanted, span), 0, -1):
        if span % f == 0:
            return f
    return 1


def allocate(target: float, weights: dict[str, int]) -> dict[str, float]:
    """Per-layer final sparsity with the same total as ``target`` over these layers: a layer
    holding under SMALL_LAYER_SHARE of the weights (a first convolution of a hundred weights,
    say) stays at most SMALL_LAYER_SPARSITY sparse, since a few lost weights there cost more
    accuracy than many in a large layer; the others make up for it. Empty when there is
    nothing to shift or the others cannot make up for it."""
    total = sum(weights.values())
    small = {name: n for name, n in weights.items() if n < SMALL_LAYER_SHARE * total}
    if not total or not small or len(small) == len(weights) or target <= SMALL_LAYER_SPARSITY:
        return {}
    small_total = sum(small.values())
    others = (target * total - SMALL_LAYER_SPARSITY * small_total) / (total - small_total)
    if others > MAX_LAYER_SPARSITY:
        return {}
    return {name: SMALL_LAYER_SPARSITY if name in small else others for name in weights}


def resolve(
    spec: pb.JobSpec, steps_per_epoch: int, layer_weights: dict[str, int] | None = None
) -> list[tuple[str, str]]:
    """Writes the recipe's choices into ``spec`` (defaults already filled in) where the client
    left them unset: schedule end step and frequency, learning rate, decay and patience, and
    the per-layer sparsity over ``layer_weights`` (the pruned layers' parameter counts).
    Returns the violations of what the client set that no step count can satisfy (a frequency
    that puts no mask update on a reachable end step)."""
    t = spec.training
    keep = t.recipe != pb.RECIPE_PLAIN
    p = spec.pruning
    split = keep and p.HasField("schedule") and validation.per_weight(p)
    # A scan splits on the worker, and so does structured pruning: over the layers as the
    # channel surgery leaves them (a split over the uploaded sizes missed the target).
    if split and layer_weights and not p.layer_sparsity and not p.sensitivity_scan and not p.HasField("structured"):
        p.layer_sparsity.update(allocate(validation.target_sparsity(p), layer_weights))
    t.recipe = pb.RECIPE_KEEP_ACCURACY if keep else pb.RECIPE_PLAIN
    if not t.learning_rate:
        base = DEFAULT_LEARNING_RATES.get(t.optimizer, 1e-3)
        t.learning_rate = base * FINE_TUNE_LR_FACTOR if keep else base
    if not t.HasField("learning_rate_decay"):
        t.learning_rate_decay = keep
    if not t.HasField("early_stopping_patience"):
        t.early_stopping_patience = patience(t.epochs) if keep and t.validation_split > 0 else 0
    if not t.HasField("distillation"):
        losses = {t.loss or defaults.LOSS, *t.output_losses.values()}  # the worker checks one output
        t.distillation = keep and all(loss.startswith("sparse_categorical_crossentropy") for loss in losses)
    if t.distillation:
        t.distillation_alpha = t.distillation_alpha or DISTILLATION_ALPHA
        t.distillation_temperature = t.distillation_temperature or DISTILLATION_TEMPERATURE
    which = spec.pruning.schedule.WhichOneof("schedule")
    if which is None:
        return []  # structured pruning only
    s = getattr(spec.pruning.schedule, which)
    total = steps_per_epoch * t.epochs
    last = max(total - 1, s.begin_step + 1)
    if which == "constant_sparsity":
        s.end_step = s.end_step or last
        s.frequency = s.frequency or _frequency_for(s.end_step - s.begin_step)
        # TFMOT updates the masks at steps begin_step + k * frequency up to end_step, and counts
        # the fine-tuning's steps from 1: the first update is begin_step itself, or frequency
        # when the schedule begins at 0.
        reach = min(s.end_step, total)
        first = s.begin_step if s.begin_step >= 1 else s.frequency
        if first > reach:
            return [
                (
                    "spec.pruning.schedule.constant_sparsity.frequency",
                    f"masks are updated every {s.frequency} steps from step {s.begin_step}, but the fine-tuning "
                    f"ends at step {reach} ({total} steps, schedule end {s.end_step}): no update would apply the "
                    f"sparsity; set a frequency of at most {max(1, reach)}",
                )
            ]
        return []
    if not keep:
        s.end_step = s.end_step or last
        s.frequency = s.frequency or defaults.FREQUENCY
        s.power = s.power or defaults.POWER
        if s.frequency > s.end_step - s.begin_step:
            return [
                (
                    "spec.pruning.schedule.polynomial_decay.frequency",
                    f"masks are updated every {s.frequency} steps from step {s.begin_step}, but the schedule ends "
                    f"at step {s.end_step} ({total} fine-tuning steps): no update would apply the sparsity; set a "
                    f"frequency of at most {max(1, s.end_step - s.begin_step)}, or use the keep_accuracy recipe",
                )
            ]
        return []
    s.power = s.power or KEEP_POWER
    if s.end_step and not s.frequency:
        span = s.end_step - s.begin_step
        s.frequency = _divisor_near(span, _frequency_for(span))
    elif not s.end_step:
        goal = s.begin_step + math.ceil((total - s.begin_step) * (1 - RECOVERY_FRACTION))
        s.frequency = s.frequency or _frequency_for(goal - s.begin_step)
        s.end_step = _aligned_end(s.begin_step, goal, s.frequency, last)
        if s.end_step > last:
            return [
                (
                    "spec.pruning.schedule.polynomial_decay.frequency",
                    f"masks are updated every {s.frequency} steps from step {s.begin_step}, but fine-tuning "
                    f"has {total} steps: the final sparsity would never be reached; lower the frequency",
                )
            ]
    return []


def steps_reaching_final(s: pb.PolynomialDecay) -> bool:
    """Whether a mask update falls on the end step, so the final sparsity is applied."""
    return s.frequency > 0 and (s.end_step - s.begin_step) % s.frequency == 0
