"""Validates a JobSpec and fills in its defaults.

``validate`` returns every problem at once as (field path, description) pairs, so the
client sees all of them in one INVALID_ARGUMENT answer.
"""

from __future__ import annotations

import difflib
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from pruning.v1 import pruning_pb2 as pb

from . import defaults

BUILTIN_DATASETS = {"mnist": {"x_train": [60000, 28, 28], "x_test": [10000, 28, 28], "labels": [0, 9]}}
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw", "adagrad", "nadam")
LOSSES = (
    defaults.LOSS,
    "sparse_categorical_crossentropy",
    "categorical_crossentropy_from_logits",
    "categorical_crossentropy",
    "binary_crossentropy_from_logits",
    "binary_crossentropy",
    "mean_squared_error",
    "mean_absolute_error",
)

Violation = tuple[str, str]
MAX_LAYER_SPARSITIES = 1000
# Characters of a layer (or output) name in a spec. Bounds the largest valid request, which
# must fit pruning_server.interceptors.MAX_REQUEST_BYTES (refused unparsed past it).
MAX_LAYER_NAME = 256
# Losses of a regression: no accuracy to measure, so no accuracy budget to keep.
REGRESSION_LOSSES = ("mean_squared_error", "mean_absolute_error")


MAX_SELECTED = 1000  # names in each list of a layer selection (include/exclude, names/types)
SELECTION_FIELDS = ("include_names", "exclude_names", "include_types", "exclude_types")
MAX_M_BY_N = 64  # n of m-by-n sparsity (2:4, 1:4, 4:8 are the patterns hardware takes)
MAX_DISTILLATION_TEMPERATURE = 100.0  # the loss is scaled by T^2: far past it, it overflows
MAX_BLOCK = 1024  # rows or columns of a pruning block
MAX_CHANNELS = 65536  # structured pruning's round_to and min_channels: past any layer's width


def _shown(value: str, limit: int = 20) -> str:
    """``value`` quoted, cut to ``limit`` characters with an ellipsis that says so (a loss name
    cut short could read as one of the valid ones)."""
    return repr(value if len(value) <= limit else value[: limit - 1] + "…")


def loss_names() -> str:
    """The losses in short, each with its ``_from_logits`` twin as ``[_from_logits]``, so the
    list fits an error answer's cut (200 bytes by default) whole.

    Example:
        >>> loss_names().split(", ")[:2]
        ['sparse_categorical_crossentropy[_from_logits]', 'categorical_crossentropy[_from_logits]']
    """
    names = [n for n in LOSSES if not n.endswith("_from_logits")]
    return ", ".join(n + ("[_from_logits]" if f"{n}_from_logits" in LOSSES else "") for n in names)


def _unknown_loss(loss: str) -> str:
    """What to answer for a loss name that is not one: the one meant, when a name is close (a
    letter dropped or swapped; the name shown whole up to past the longest loss's length: cut
    at 20, "sparse_categorical_…" hid the very typo), else every name, beside the name cut to
    20 (the whole answer within the server's 200-byte cut)."""
    longest = max(map(len, LOSSES))
    # "with_logits" is TensorFlow's word (sigmoid_cross_entropy_with_logits) for "from_logits"
    said = loss[: longest + 8].lower().replace("with_logits", "from_logits")
    # 0.9: a letter or two off ("..._from_logit"), not another loss ("binary_focal_crossentropy")
    meant = difflib.get_close_matches(said, LOSSES, n=1, cutoff=0.9)
    if meant:
        return f"{_shown(loss, longest + 8)}: not a loss; did you mean {meant[0]!r}?"
    return f"{_shown(loss)}: not one of {loss_names()}"


def is_regression(loss: str) -> bool:
    """Whether ``loss`` ('' = the default) is a regression's: the job then reports its losses
    and no accuracy (there is none to measure)."""
    return loss in REGRESSION_LOSSES


MAX_OUTPUT_LOSSES = 64


def logits_warning(output: str, activation: str, loss: str, units: int | None = None) -> str | None:
    """The warning for an output ending in ``activation`` under ``loss``, or None. A loss
    ``*_from_logits`` on probabilities (a softmax or sigmoid) trains as if they were logits,
    slowly and badly; a cross-entropy taking probabilities on logits (no activation) clips or
    normalises them into nonsense. Nothing fails either way. A sigmoid of one unit (``units``,
    where known) is a binary classifier: its loss is the binary cross-entropy."""
    if activation in ("softmax", "sigmoid") and loss.endswith("_from_logits"):
        fix = loss.removesuffix("_from_logits")
        if activation == "sigmoid" and units == 1:
            fix = "binary_crossentropy"
        return (
            f"output {output!r} ends in {activation}, but its loss {loss} takes logits: it trains on "
            f"probabilities as if they were logits; give the loss {fix}"
        )
    if activation == "linear" and loss.endswith("crossentropy") and f"{loss}_from_logits" in LOSSES:
        return (
            f"output {output!r} ends in no activation (logits), but its loss {loss} takes probabilities: it "
            f"trains on logits as if they were probabilities; give the loss {loss}_from_logits"
        )
    return None


def output_loss(t: pb.TrainingSpec, output: str) -> str:
    """The loss of ``output`` ('' = the default): its own in ``output_losses``, else ``loss``."""
    return t.output_losses.get(output) or t.loss


def budget_loss_problem(t: pb.TrainingSpec, outputs: Sequence[str] = ()) -> str | None:
    """Why an accuracy budget cannot be kept under ``t``'s losses, or None: it needs an
    accuracy, so a classification loss on at least one output. With the model's ``outputs``,
    the loss each of them takes; without (the spec alone), every loss the spec names."""
    losses = {output_loss(t, o) for o in outputs} if outputs else {t.loss, *t.output_losses.values()}
    if all(is_regression(loss) for loss in losses):
        return (
            f"an accuracy budget needs a classification loss on some output; under {', '.join(sorted(losses))} "
            "there is no accuracy to keep"
        )
    return None


def _sparsity(value: float, field: str, out: list[Violation]) -> None:
    if not 0.0 <= value < 1.0:
        out.append((field, f"must be in [0, 1), got {value}"))


def _steps(begin: int, end: int, frequency: int, prefix: str, out: list[Violation]) -> None:
    if begin < 0:
        out.append((f"{prefix}.begin_step", f"must be >= 0, got {begin}"))
    if end < 0:
        out.append((f"{prefix}.end_step", f"must be >= 0 (0 = end of fine-tuning), got {end}"))
    elif end and end <= begin:
        out.append((f"{prefix}.end_step", f"must be after begin_step ({begin}), got {end}"))
    if frequency < 0:
        out.append((f"{prefix}.frequency", f"must be >= 1 (0 = the recipe's), got {frequency}"))


def _long_names(names: Iterable[str], field: str, out: list[Violation]) -> None:
    longest = max(map(len, names), default=0)
    if longest > MAX_LAYER_NAME:
        out.append((field, f"names of at most {MAX_LAYER_NAME} characters, got one of {longest}"))


def _validate_structured(s: pb.StructuredPruning, out: list[Violation]) -> None:
    prefix = "spec.pruning.structured"
    _long_names(s.layer_ratios, f"{prefix}.layer_ratios", out)
    _sparsity(s.ratio, f"{prefix}.ratio", out)
    if len(s.layer_ratios) > MAX_LAYER_SPARSITIES:
        out.append((f"{prefix}.layer_ratios", f"at most {MAX_LAYER_SPARSITIES} layers, got {len(s.layer_ratios)}"))
    for name, ratio in sorted(s.layer_ratios.items())[:MAX_LAYER_SPARSITIES]:
        if not name:
            out.append((f"{prefix}.layer_ratios", "layer names must not be empty"))
        _sparsity(ratio, f"{prefix}.layer_ratios[{name[:200]}]", out)
    if not 0 <= s.min_channels <= MAX_CHANNELS:
        out.append(
            (
                f"{prefix}.min_channels",
                f"must be in [1, {MAX_CHANNELS}] (0 = {defaults.MIN_CHANNELS}), got {s.min_channels}",
            )
        )
    if not 0 <= s.round_to <= MAX_CHANNELS:
        out.append(
            (f"{prefix}.round_to", f"must be in [1, {MAX_CHANNELS}] (0 = {defaults.ROUND_TO}), got {s.round_to}")
        )
    if s.importance not in pb.ImportanceCriterion.values():
        out.append((f"{prefix}.importance", f"unknown criterion {s.importance}"))
    if not 0 <= s.taylor_batches <= defaults.MAX_TAYLOR_BATCHES:
        out.append(
            (f"{prefix}.taylor_batches", f"must be in [1, {defaults.MAX_TAYLOR_BATCHES}], got {s.taylor_batches}")
        )
    if not 0 <= s.latency_repeats <= defaults.MAX_LATENCY_REPEATS:
        out.append(
            (f"{prefix}.latency_repeats", f"must be in [1, {defaults.MAX_LATENCY_REPEATS}], got {s.latency_repeats}")
        )


def _validate_pruning(spec: pb.PruningSpec, out: list[Violation]) -> None:
    which = spec.schedule.WhichOneof("schedule")
    if spec.HasField("structured"):
        _validate_structured(spec.structured, out)
    if which is None and spec.HasField("structured"):
        pass  # structured pruning only
    elif which is None:
        out.append(("spec.pruning.schedule", "choose constant_sparsity or polynomial_decay (or set structured)"))
    elif which == "constant_sparsity":
        c = spec.schedule.constant_sparsity
        prefix = "spec.pruning.schedule.constant_sparsity"
        _sparsity(c.target_sparsity, f"{prefix}.target_sparsity", out)
        _steps(c.begin_step, c.end_step, c.frequency, prefix, out)
    else:
        s = spec.schedule.polynomial_decay
        prefix = "spec.pruning.schedule.polynomial_decay"
        _sparsity(s.initial_sparsity, f"{prefix}.initial_sparsity", out)
        _sparsity(s.final_sparsity, f"{prefix}.final_sparsity", out)
        if s.final_sparsity < s.initial_sparsity:
            out.append((f"{prefix}.final_sparsity", "must not be below initial_sparsity"))
        if not (math.isfinite(s.power) and s.power >= 0):
            out.append((f"{prefix}.power", f"must be a finite number > 0 (0 = the recipe's), got {s.power}"))
        _steps(s.begin_step, s.end_step, s.frequency, prefix, out)
    if spec.block_size and (
        len(spec.block_size) != 2 or not 1 <= min(spec.block_size) <= max(spec.block_size) <= MAX_BLOCK
    ):
        out.append(
            ("spec.pruning.block_size", f"must be two ints in [1, {MAX_BLOCK}], got {list(spec.block_size)[:4]}")
        )
    mn = spec.sparsity_m_by_n
    if spec.HasField("sparsity_m_by_n"):
        if not 0 < mn.m < mn.n <= MAX_M_BY_N:
            out.append(
                (
                    "spec.pruning.sparsity_m_by_n",
                    f"needs 0 < m < n <= {MAX_M_BY_N} (m zeros of every n), got {mn.m}:{mn.n}",
                )
            )
        if spec.block_size and list(spec.block_size) != [1, 1]:
            out.append(("spec.pruning.sparsity_m_by_n", "cannot be combined with block_size"))
    if spec.sensitivity_scan and (spec.layer_sparsity or not per_weight(spec) or not spec.HasField("schedule")):
        out.append(
            (
                "spec.pruning.sensitivity_scan",
                "splits a schedule's target over the layers itself: it needs a schedule, 1x1 blocks, no m-by-n "
                "pattern, no policy and no layer_sparsity",
            )
        )
    for name, value in sorted(spec.layer_sparsity.items())[:MAX_LAYER_SPARSITIES]:
        _sparsity(value, f"spec.pruning.layer_sparsity[{name[:200]}]", out)
    if len(spec.layer_sparsity) > MAX_LAYER_SPARSITIES:
        out.append(("spec.pruning.layer_sparsity", f"at most {MAX_LAYER_SPARSITIES} layers"))
    _long_names(spec.layer_sparsity, "spec.pruning.layer_sparsity", out)
    for field in SELECTION_FIELDS:
        _long_names(getattr(spec.layers, field), f"spec.pruning.layers.{field}", out)
    long_lists = [field for field in SELECTION_FIELDS if len(getattr(spec.layers, field)) > MAX_SELECTED]
    for field in long_lists:
        # each name is looked for in every layer of the model, each class name matched against every
        # Keras class (difflib): 50,000 of them held the server's loop for 16 s, 500,000 for 3.5 min
        got = len(getattr(spec.layers, field))
        out.append((f"spec.pruning.layers.{field}", f"at most {MAX_SELECTED} names, got {got}"))
    names = set() if long_lists else set(spec.layers.include_names) & set(spec.layers.exclude_names)
    if names:
        out.append(("spec.pruning.layers", f"layers both included and excluded: {sorted(names)}"))
    if spec.policy and (
        spec.layers.include_names or spec.layers.include_types or spec.layers.exclude_names or spec.layers.exclude_types
    ):
        out.append(("spec.pruning.policy", "a pruning policy applies to the whole model: drop the layer selection"))


def _validate_training(t: pb.TrainingSpec, out: list[Violation]) -> None:
    if not 0 <= t.epochs <= defaults.MAX_EPOCHS:
        out.append(
            ("spec.training.epochs", f"must be in [1, {defaults.MAX_EPOCHS}] (0 = {defaults.EPOCHS}), got {t.epochs}")
        )
    if not 0 <= t.batch_size <= defaults.MAX_BATCH_SIZE:
        out.append(("spec.training.batch_size", f"must be in [1, {defaults.MAX_BATCH_SIZE}], got {t.batch_size}"))
    if t.optimizer and t.optimizer.lower() not in OPTIMIZERS:
        out.append(("spec.training.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {t.optimizer!r}"))
    if t.loss and t.loss not in LOSSES:
        out.append(("spec.training.loss", _unknown_loss(t.loss)))
    _long_names(t.output_losses, "spec.training.output_losses", out)
    for output, loss in sorted(t.output_losses.items())[:MAX_OUTPUT_LOSSES]:
        field = f"spec.training.output_losses[{output[:200]}]"
        if not output:
            out.append((field, "an output's name, not empty"))
        elif loss not in LOSSES:
            out.append((field, _unknown_loss(loss)))
    if len(t.output_losses) > MAX_OUTPUT_LOSSES:
        out.append(("spec.training.output_losses", f"at most {MAX_OUTPUT_LOSSES} outputs"))
    if not (math.isfinite(t.learning_rate) and 0 <= t.learning_rate <= MAX_LEARNING_RATE):
        out.append(
            (
                "spec.training.learning_rate",
                f"must be in [0, {MAX_LEARNING_RATE:g}] (0 = the recipe's), got {t.learning_rate}",
            )
        )
    if t.recipe not in pb.Recipe.values():
        out.append(("spec.training.recipe", f"unknown recipe {t.recipe}; known: {list(pb.Recipe.values())[1:]}"))
    if t.HasField("early_stopping_patience") and not 0 <= t.early_stopping_patience <= defaults.MAX_EPOCHS:
        out.append(
            (
                "spec.training.early_stopping_patience",
                f"must be in [0, {defaults.MAX_EPOCHS}] (0 = never), got {t.early_stopping_patience}",
            )
        )
    if not 0 <= t.validation_split < 1:
        out.append(("spec.training.validation_split", f"must be in [0, 1), got {t.validation_split}"))
    if t.max_train_samples < 0:
        out.append(("spec.training.max_train_samples", f"must be >= 0, got {t.max_train_samples}"))
    if not 0 <= t.seed < 2**32:
        out.append(("spec.training.seed", f"must be in [0, 2^32) (0 = none), got {t.seed}"))
    if not (math.isfinite(t.distillation_alpha) and 0 <= t.distillation_alpha <= 1):
        out.append(
            ("spec.training.distillation_alpha", f"must be in (0, 1] (0 = the recipe's), got {t.distillation_alpha}")
        )
    if not (
        math.isfinite(t.distillation_temperature)
        and (t.distillation_temperature == 0 or 1 <= t.distillation_temperature <= MAX_DISTILLATION_TEMPERATURE)
    ):
        out.append(
            (
                "spec.training.distillation_temperature",
                f"must be in [1, {MAX_DISTILLATION_TEMPERATURE:g}] (0 = the recipe's), got {t.distillation_temperature}",
            )
        )


MAX_LABELS = 64
MAX_LABEL_LENGTH = 256
MAX_IDEMPOTENCY_KEY = 256


def validate_request(request: pb.CreateJobRequest) -> list[Violation]:
    """Every problem of a CreateJob request: its spec, labels and idempotency key."""
    return validate(request.spec) + validate_metadata(request.labels, request.idempotency_key)


# Direction marks, embeddings, overrides and isolates: they reorder what a listing shows.
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _control(text: str) -> bool:
    """Holds a control character, a line or paragraph separator, or a bidi control."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI for c in text)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def validate_metadata(labels: Mapping[str, str], idempotency_key: str, max_labels: int = MAX_LABELS) -> list[Violation]:
    """The problems of a request's labels and idempotency key (jobs and sweeps alike)."""
    out: list[Violation] = []
    if len(labels) > max_labels:
        out.append(("labels", f"at most {max_labels} labels, got {len(labels)}"))
    # past the count, each label is not looked at: 400,000 of them took the server's loop 3.6 s
    for key, value in labels.items() if len(labels) <= max_labels else ():
        shown = _printable(key[:40])
        if not key or len(key) > MAX_LABEL_LENGTH or len(value) > MAX_LABEL_LENGTH:
            out.append(
                (f"labels[{shown}]", f"keys must be 1-{MAX_LABEL_LENGTH} and values 0-{MAX_LABEL_LENGTH} characters")
            )
        elif _control(key) or _control(value):
            # printed by every listing; and NUL would make two label sets one request fingerprint
            out.append((f"labels[{shown}]", "keys and values must hold no control characters (NUL, newline, ...)"))
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        out.append(("idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY} characters"))
    elif _control(idempotency_key):
        out.append(("idempotency_key", "must hold no control characters (NUL, newline, ...)"))
    return out


def selected(kind: str, name: str, sel: pb.LayerSelection) -> bool:
    """Whether the layer selection picks a layer (workers apply the same rule)."""
    if name in sel.exclude_names or kind in sel.exclude_types:
        return False
    if sel.include_names or sel.include_types:
        return name in sel.include_names or kind in sel.include_types
    return True


# Layers that make channels of their own, which structured pruning removes (the worker's
# structured.graph.PRODUCERS and their subclasses, by class name).
CHANNEL_MAKERS = frozenset(
    [
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "Dense",
        "SeparableConv1D",
        "SeparableConv2D",
    ]
)


def _validate_structured_against_model(
    spec: pb.PruningSpec, kinds: dict[str, str], outputs: list[str], out: list[Violation]
) -> None:
    """A structured spec names layers that make channels, and must not ask to shrink an output
    layer: its units are the model's answer (classes, values), which callers rely on."""
    prefix = "spec.pruning.structured.layer_ratios"
    for name, ratio in sorted(spec.structured.layer_ratios.items()):
        if name not in kinds:
            out.append((f"{prefix}[{name}]", f"the model has no layer {name!r}"))
        elif kinds[name] not in CHANNEL_MAKERS:
            out.append(
                (
                    f"{prefix}[{name}]",
                    f"{name!r} is a {kinds[name]}, not a layer with channels of its own (Conv, Dense); name the "
                    "layer that makes the channels",
                )
            )
        elif name in outputs and ratio > 0:
            out.append((f"{prefix}[{name}]", f"{name!r} is a model output; its units cannot be removed"))
    if not spec.HasField("schedule") and spec.structured.ratio > 0:
        asked = sorted(set(spec.layers.include_names) & set(outputs))
        if asked:
            out.append(
                (
                    "spec.pruning.layers.include_names",
                    f"{asked} are model outputs; structured pruning cannot shrink them",
                )
            )


_CONTAINERS = ("InputLayer", "Sequential", "Functional", "Model")


def validate_against_model(spec: pb.JobSpec, layers: list, outputs: list[str] | None = None) -> list[Violation]:
    """Problems only the model's layer list reveals: selected layers that do not exist,
    block sparsity on layers whose weights are not 2-D, structured pruning of ``outputs``
    (the names of the model's output layers)."""
    names = {name for _, name in layers}
    out: list[Violation] = []
    for field in ("include_names", "exclude_names"):
        missing = sorted(set(getattr(spec.pruning.layers, field)) - names)
        if missing:
            # its layers by name: not the model itself, nor its inputs and nested models
            have = sorted(name for kind, name in layers if kind not in _CONTAINERS)
            out.append((f"spec.pruning.layers.{field}", f"the model has no layers {missing[:5]}; it has {have[:20]}"))
    if list(spec.pruning.block_size) not in ([], [1, 1]):
        convs = sorted(name for kind, name in layers if "Conv" in kind and selected(kind, name, spec.pruning.layers))
        if convs:
            out.append(
                ("spec.pruning.block_size", f"block sparsity needs 2-D weights; exclude the conv layers {convs}")
            )
    if spec.pruning.HasField("sparsity_m_by_n"):
        odd = sorted(
            f"{name} ({kind})"
            for kind, name in layers
            if kind in _NOT_2D_OR_4D and selected(kind, name, spec.pruning.layers)
        )
        if odd:
            out.append(
                (
                    "spec.pruning.sparsity_m_by_n",
                    f"takes 2-D (Dense) and 4-D (Conv2D) kernels only; exclude the layers {odd[:10]}",
                )
            )
    if spec.pruning.HasField("structured"):
        _validate_structured_against_model(spec.pruning, {name: kind for kind, name in layers}, outputs or [], out)
    return out


def unknown_types(spec: pb.JobSpec, layers: list, known: frozenset[str]) -> list[Violation]:
    """Layer class names in the selection that are a misspelling of a Keras layer class
    (``known``, and the model's own): "dense" for Dense, "Dence". One selects nothing, or
    excludes nothing ("dense" excluded nothing and the Dense layers it was to keep whole were
    pruned). Any other name may be a class the model lacks (a pipeline's exclusion of
    MultiHeadAttention for every model) and is taken. Checked at submit."""
    out: list[Violation] = []
    kinds = {kind for kind, _ in layers if kind not in _CONTAINERS}
    classes = sorted(known | kinds)
    by_case = {kind.lower(): kind for kind in classes}
    for field in ("include_types", "exclude_types"):
        meant: dict[str, str] = {}
        for name in sorted(set(getattr(spec.pruning.layers, field)) - kinds - known):
            close = by_case.get(name.lower()) or next(iter(difflib.get_close_matches(name, classes, 1, 0.8)), None)
            if close:
                meant[name[:60]] = close
        if meant:
            said = ", ".join(f"{name!r} (did you mean {kind}?)" for name, kind in list(meant.items())[:5])
            out.append(
                (
                    f"spec.pruning.layers.{field}",
                    f"not a Keras layer class: {said}; class names are case-sensitive; the model's are "
                    f"{sorted(kinds)[:20]}",
                )
            )
    return out


# Prunable classes whose kernels have 3 or 5 dimensions: TFMOT's m-by-n masks take neither (the
# job failed at its start: recipe.check_shapes).
_NOT_2D_OR_4D = frozenset({"Conv1D", "Conv1DTranspose", "SeparableConv1D", "Conv3D", "Conv3DTranspose"})


def validate_budget(budget: pb.AccuracyBudget, field: str, out: list[Violation]) -> None:
    which = budget.WhichOneof("limit")
    if which is not None:
        value = getattr(budget, which)
        if not (math.isfinite(value) and 0 <= value <= 100):  # no accuracy loses more than all of it
            out.append((f"{field}.{which}", f"must be a number in [0, 100], got {value}"))


SEARCH_FIELDS = ("search_low", "search_high", "tolerance", "max_trials", "parallel_trials")


def validate_search(search: pb.SweepSpec | pb.AccuracyBudget, field: str, out: list[Violation]) -> None:
    """The search fields (``SEARCH_FIELDS``) of a sweep, or of a job's budget; 0 is the default."""
    low, high = search.search_low or defaults.SEARCH_LOW, search.search_high or defaults.SEARCH_HIGH
    if not (0 <= low < high < 1):
        # named after the bound that is off; an unset low (0 = 0.5) above a high that is given: the high's
        if not 0 <= low < 1:
            bad = "search_low"
        elif not 0 < high < 1 or not search.search_low:
            bad = "search_high"
        else:
            bad = "search_low"
        hint = f" (search_low 0 means {defaults.SEARCH_LOW})" if not search.search_low else ""
        out.append((f"{field}.{bad}", f"needs 0 <= search_low < search_high < 1, got {low} and {high}{hint}"))
    if not (math.isfinite(search.tolerance) and search.tolerance >= 0):
        out.append(
            (
                f"{field}.tolerance",
                f"must be a finite number >= 0 (0 = {defaults.SEARCH_TOLERANCE}), got {search.tolerance}",
            )
        )
    if not 0 <= search.max_trials <= defaults.LIMIT_TRIALS:
        out.append(
            (
                f"{field}.max_trials",
                f"must be in [1, {defaults.LIMIT_TRIALS}] (0 = the default), got {search.max_trials}",
            )
        )
    if not 0 <= search.parallel_trials <= defaults.LIMIT_PARALLEL:
        out.append(
            (
                f"{field}.parallel_trials",
                f"must be in [1, {defaults.LIMIT_PARALLEL}] (0 = the default), got {search.parallel_trials}",
            )
        )


def has_budget(spec: pb.JobSpec) -> bool:
    return spec.budget.WhichOneof("limit") is not None


# Far above any rate that trains (Adam's default is 0.001): 1e300 passed CreateJob and failed
# the job after its baseline with Python's "value out of range for a double-precision float".
MAX_LEARNING_RATE = 100.0


def validate(spec: pb.JobSpec) -> list[Violation]:
    """Every problem of ``spec`` as (field, description); empty when it is valid."""
    out: list[Violation] = []
    if has_budget(spec):
        validate_budget(spec.budget, "spec.budget", out)
        validate_search(spec.budget, "spec.budget", out)
        if spec.training.skip_baseline:
            out.append(("spec.training.skip_baseline", "a budget is a loss from the baseline: evaluate it"))
        if not spec.pruning.HasField("schedule"):
            out.append(("spec.pruning.schedule", "a budget is searched by varying the schedule's sparsity: give one"))
        if spec.pruning.HasField("sparsity_m_by_n"):
            out.append(("spec.budget", "sparsity_m_by_n fixes the sparsity, so there is nothing to search"))
        if problem := budget_loss_problem(spec.training):
            out.append(("spec.training.loss", problem))
    else:
        out += [
            (
                f"spec.budget.{name}",
                "says how a budget is searched for: give the budget (max_loss_pp or max_relative_loss_percent)",
            )
            for name in SEARCH_FIELDS
            if getattr(spec.budget, name)
        ]
    if not spec.model_id:
        out.append(("spec.model_id", "required: the id UploadModel returned"))
    which = spec.dataset.WhichOneof("source")
    if which is None:
        out.append(("spec.dataset", "choose artifact_id (an uploaded .npz) or builtin"))
    elif which == "builtin" and spec.dataset.builtin not in BUILTIN_DATASETS:
        name = spec.dataset.builtin
        # a file's name: the SDK's job_spec(dataset="data.npz") sends it as a built-in's
        hint = "; a file is uploaded first (upload_dataset, or `pruning upload`) and given by its artifact id"
        file_like = name.lower().endswith(".npz") or "/" in name or "\\" in name
        out.append(
            (
                "spec.dataset.builtin",
                f"must be one of {sorted(BUILTIN_DATASETS)}, got {name[:100]!r}{hint if file_like else ''}",
            )
        )
    _validate_pruning(spec.pruning, out)
    _validate_training(spec.training, out)
    _validate_formats(spec.export.formats, out)
    if not 0 <= spec.report.latency_repeats <= defaults.MAX_LATENCY_REPEATS:
        out.append(
            (
                "spec.report.latency_repeats",
                f"must be in [1, {defaults.MAX_LATENCY_REPEATS}] (0 = {defaults.LATENCY_REPEATS}), "
                f"got {spec.report.latency_repeats}",
            )
        )
    if spec.export.keras_version not in pb.KerasVersion.values():
        out.append(("spec.export.keras_version", f"must be 2, 3 or unset, got {spec.export.keras_version}"))
    if not (math.isfinite(spec.time_limit_s) and spec.time_limit_s >= 0):
        out.append(
            ("spec.time_limit_s", f"must be a finite number of seconds >= 0 (0 = none), got {spec.time_limit_s}")
        )
    return out


def _validate_formats(formats: Sequence[int], out: list[Violation]) -> None:
    known = pb.ExportFormat.values()
    if len(formats) > len(known) - 1:  # each format once: 7 million of them held the server's loop for 28 s
        out.append(("spec.export.formats", f"at most {len(known) - 1} formats (each once), got {len(formats)}"))
        return
    if len(set(formats)) != len(formats):
        out.append(("spec.export.formats", "lists a format twice"))
    if pb.EXPORT_FORMAT_UNSPECIFIED in formats:
        out.append(("spec.export.formats", "EXPORT_FORMAT_UNSPECIFIED is not a format"))
    unknown = [f for f in formats if f not in known]
    if unknown:
        out.append(("spec.export.formats", f"unknown formats {unknown}; known: {list(known)[1:]}"))


def time_limit(spec: pb.JobSpec, service_limit_s: float) -> tuple[float, str]:
    """The time limit of an attempt of the job, seconds (0 = none), and whose it is: the
    spec's ``time_limit_s`` or the service's (``PRUNING_JOB_TIME_LIMIT_S``), the lower where
    both are set."""
    own = spec.time_limit_s if math.isfinite(spec.time_limit_s) and spec.time_limit_s > 0 else 0.0
    if own and (not service_limit_s or own <= service_limit_s):
        return own, "the job's time_limit_s"
    if service_limit_s:
        return service_limit_s, "this service's PRUNING_JOB_TIME_LIMIT_S"
    return 0.0, ""


def per_weight(p: pb.PruningSpec) -> bool:
    """Whether each weight is pruned on its own (no block, m-by-n pattern or policy), so a
    layer can be given any sparsity of its own."""
    return not (p.HasField("sparsity_m_by_n") or p.policy or list(p.block_size) not in ([], [1, 1]))


def m_by_n_zeros(cols: int, mn: pb.SparsityMByN) -> int:
    """Zeros m-by-n sparsity leaves in one row of ``cols`` input channels: TFMOT zeroes m of
    every n consecutive ones, and of a last group shorter than n only what exceeds n - m."""
    return (cols // mn.n) * mn.m + max(0, cols % mn.n - (mn.n - mn.m))


def m_by_n_leaves_dense(what: str, cols: int, mn: pb.SparsityMByN) -> str | None:
    """The warning for a kernel with too few input channels for m-by-n to zero any (``what``
    names it), or None."""
    if cols > mn.n - mn.m:
        return None
    return f"{what} has {cols} input channels: {mn.m}:{mn.n} sparsity (m zeros of every n) leaves it dense"


def target_sparsity(p: pb.PruningSpec) -> float:
    """The sparsity the spec aims at by the end of fine-tuning."""
    if p.HasField("sparsity_m_by_n"):  # m zeros of every n (TFMOT's sparsity_m_by_n)
        return p.sparsity_m_by_n.m / p.sparsity_m_by_n.n
    return schedule_final(p.schedule)


def schedule_final(s: pb.PruningSchedule) -> float:
    """The sparsity a schedule ends at (its constant target, or a polynomial's final one)."""
    return s.constant_sparsity.target_sparsity if s.HasField("constant_sparsity") else s.polynomial_decay.final_sparsity


def with_defaults(spec: pb.JobSpec) -> pb.JobSpec:
    """A copy of a valid ``spec`` with every 0/empty default made explicit."""
    out = pb.JobSpec()
    out.CopyFrom(spec)
    t = out.training
    t.epochs = t.epochs or defaults.EPOCHS
    t.batch_size = t.batch_size or defaults.BATCH_SIZE
    t.optimizer = (t.optimizer or defaults.OPTIMIZER).lower()
    t.loss = t.loss or defaults.LOSS
    if not t.HasField("validation_split"):
        t.validation_split = defaults.VALIDATION_SPLIT
    # The schedule's frequency, end step and power are left to the recipe (``recipe.resolve``),
    # which knows the step count.
    if out.pruning.HasField("structured"):
        s = out.pruning.structured
        s.min_channels = s.min_channels or defaults.MIN_CHANNELS
        s.round_to = s.round_to or defaults.ROUND_TO
        s.importance = s.importance or pb.IMPORTANCE_CRITERION_L1
        s.taylor_batches = s.taylor_batches or defaults.TAYLOR_BATCHES
        s.latency_repeats = s.latency_repeats or defaults.LATENCY_REPEATS
    if not out.pruning.block_size:
        out.pruning.block_size.extend(defaults.BLOCK_SIZE)
    if not out.pruning.block_pooling_type:
        out.pruning.block_pooling_type = pb.BLOCK_POOLING_TYPE_AVG
    if not out.export.formats:
        out.export.formats.append(pb.EXPORT_FORMAT_KERAS)
    if not out.report.HasField("enabled"):
        out.report.enabled = True
    out.report.latency_repeats = out.report.latency_repeats or defaults.LATENCY_REPEATS
    return out
