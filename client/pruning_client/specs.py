"""Builders for the job spec.

The server owns the defaults: a parameter left at None is left unset in the spec, and the
server fills in its default (epochs 2, batch size 128, adam, validation split 0.1, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pruning.v1 import pruning_pb2 as pb

__all__ = [
    "EXPORT_FORMATS",
    "IMPORTANCE_CRITERIA",
    "accuracy_budget",
    "constant_sparsity",
    "export_format",
    "export_format_name",
    "job_spec",
    "polynomial_decay",
    "structured",
]

_PREFIX = "EXPORT_FORMAT_"

#: Export format names ("keras", "h5", "saved_model", "tflite", "tflite_int8") to the contract's
#: enum values. The names are derived from the contract's ExportFormat enum, which owns them;
#: an artifact's ``format`` field carries the same name.
EXPORT_FORMATS: dict[str, pb.ExportFormat.ValueType] = {
    name.removeprefix(_PREFIX).lower(): value
    for name, value in pb.ExportFormat.items()
    if value != pb.EXPORT_FORMAT_UNSPECIFIED
}


#: The job report's file formats (the contract's ``ReportFile``), among a job's artifacts.
REPORT_FORMATS: frozenset[str] = frozenset(
    name.removeprefix("REPORT_FILE_").lower() for name, value in pb.ReportFile.items() if value
)


def exports(artifacts: Iterable[pb.Artifact]) -> list[pb.Artifact]:
    """A job's exported models among its artifacts (the report's files left out), the pruned
    model first."""
    return [a for a in artifacts if a.format not in REPORT_FORMATS]


def export_format(name: str) -> pb.ExportFormat.ValueType:
    """The ExportFormat value for ``name``, a format name or a file name ending in one
    ("saved_model", "saved_model.zip", "KERAS"); raises ValueError naming the choices.

    Example:
        >>> export_format("saved_model.zip") == pb.EXPORT_FORMAT_SAVED_MODEL
        True
    """
    key = name.strip().lower().removeprefix(_PREFIX.lower())
    if key not in EXPORT_FORMATS and "." in key:
        key = key.split(".", 1)[0]
    if key not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {name!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[key]


def export_format_name(value: int) -> str:
    """The name of an ExportFormat value ("saved_model" for EXPORT_FORMAT_SAVED_MODEL)."""
    return pb.ExportFormat.Name(pb.ExportFormat.ValueType(value)).removeprefix(_PREFIX).lower()


_CRITERION_PREFIX = "IMPORTANCE_CRITERION_"

#: Importance criterion names ("l1", "l2", "bn_scale", "taylor") to the contract's enum values,
#: derived from its ImportanceCriterion enum.
IMPORTANCE_CRITERIA: dict[str, pb.ImportanceCriterion.ValueType] = {
    name.removeprefix(_CRITERION_PREFIX).lower(): value
    for name, value in pb.ImportanceCriterion.items()
    if value != pb.IMPORTANCE_CRITERION_UNSPECIFIED
}


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _default_schedule(m_by_n: tuple[int, int] | None) -> pb.PruningSchedule:
    """``polynomial_decay()``; with an m-by-n pattern, which sets the sparsity (m/n), one that
    ends there (the schedule then says only when the masks update)."""
    if m_by_n is None or not 0 < m_by_n[0] < m_by_n[1]:
        return polynomial_decay()
    final = m_by_n[0] / m_by_n[1]
    return polynomial_decay(min(0.5, final), final)


def polynomial_decay(
    initial_sparsity: float = 0.5,
    final_sparsity: float = 0.8,
    *,
    begin_step: int = 0,
    end_step: int = 0,
    power: float | None = None,
    frequency: int | None = None,
) -> pb.PruningSchedule:
    """PolynomialDecay schedule; end_step 0 and ``frequency`` None leave them to the server's
    recipe (keep_accuracy: final sparsity on a mask update at about half of the steps; plain:
    the last step, every 100 steps), ``power`` None takes the recipe's (keep_accuracy 5, plain 3).

    Example:
        >>> polynomial_decay(0.5, 0.8).polynomial_decay.final_sparsity
        0.8
    """
    return pb.PruningSchedule(
        polynomial_decay=pb.PolynomialDecay(
            initial_sparsity=initial_sparsity,
            final_sparsity=final_sparsity,
            begin_step=begin_step,
            end_step=end_step,
            **_given(power=power, frequency=frequency),
        )
    )


def constant_sparsity(
    target_sparsity: float, *, begin_step: int = 0, end_step: int = 0, frequency: int | None = None
) -> pb.PruningSchedule:
    """ConstantSparsity schedule; end_step 0 means the last fine-tuning step, ``frequency``
    None the server's (about 10 mask updates over the span, at most every 100 steps).

    Example:
        >>> constant_sparsity(0.5, frequency=5).constant_sparsity.frequency
        5
    """
    return pb.PruningSchedule(
        constant_sparsity=pb.ConstantSparsity(
            target_sparsity=target_sparsity, begin_step=begin_step, end_step=end_step, **_given(frequency=frequency)
        )
    )


def structured(
    ratio: float = 0.5,
    *,
    layer_ratios: Mapping[str, float] | None = None,
    min_channels: int | None = None,
    round_to: int | None = None,
    importance: str = "l1",
    taylor_batches: int | None = None,
    latency_repeats: int | None = None,
) -> pb.StructuredPruning:
    """Structured pruning: remove ``ratio`` of the channels (filters, units) of every layer
    that can shrink safely, ``layer_ratios`` overriding it by layer name, keeping at least
    ``min_channels`` and rounding kept counts up to a multiple of ``round_to``, ranked by
    ``importance`` (see :data:`IMPORTANCE_CRITERIA`). None leaves the server's default.

    Example:
        >>> structured(0.5, round_to=8, importance="bn_scale").round_to
        8
    """
    key = importance.strip().lower()
    if key not in IMPORTANCE_CRITERIA:
        raise ValueError(f"unknown importance {importance!r}; choose one of {', '.join(IMPORTANCE_CRITERIA)}")
    return pb.StructuredPruning(
        ratio=ratio,
        layer_ratios=dict(layer_ratios or {}),
        importance=IMPORTANCE_CRITERIA[key],
        **_given(
            min_channels=min_channels,
            round_to=round_to,
            taylor_batches=taylor_batches,
            latency_repeats=latency_repeats,
        ),
    )


def accuracy_budget(
    max_loss_pp: float | None = None,
    max_relative_loss_percent: float | None = None,
    *,
    search_low: float = 0.0,
    search_high: float = 0.0,
    tolerance: float = 0.0,
    max_trials: int = 0,
    parallel_trials: int = 0,
) -> pb.AccuracyBudget:
    """An accuracy budget: at most ``max_loss_pp`` points of test accuracy lost against the
    baseline, or at most ``max_relative_loss_percent`` percent of it; empty with neither.

    For a job's budget (``job_spec(budget=...)``) the rest bound its search, as
    :func:`sweep_spec`'s arguments of the same names bound a sweep's: the sparsities searched
    (``search_low`` to ``search_high``), how close the answer must be (``tolerance``), and how
    many trials it may run (``max_trials``) and at once (``parallel_trials``); 0 = the
    service's defaults (0.5 to 0.95, 0.02, 8 trials, 2 at a time). A sweep's budget leaves
    them 0.

    Example:
        >>> accuracy_budget(max_loss_pp=0.5).max_loss_pp
        0.5
        >>> accuracy_budget(max_loss_pp=1.0, max_trials=4).max_trials
        4
    """
    if max_loss_pp is not None and max_relative_loss_percent is not None:
        raise ValueError("give max_loss_pp or max_relative_loss_percent, not both")
    budget = pb.AccuracyBudget(
        search_low=search_low,
        search_high=search_high,
        tolerance=tolerance,
        max_trials=max_trials,
        parallel_trials=parallel_trials,
    )
    if max_loss_pp is not None:
        budget.max_loss_pp = max_loss_pp
    if max_relative_loss_percent is not None:
        budget.max_relative_loss_percent = max_relative_loss_percent
    return budget


#: Fine-tuning recipes by name (see the contract's ``Recipe``).
RECIPES: dict[str, pb.Recipe.ValueType] = {"keep_accuracy": pb.RECIPE_KEEP_ACCURACY, "plain": pb.RECIPE_PLAIN}


LOSS_ALIASES = {"mse": "mean_squared_error", "mae": "mean_absolute_error"}
"""Keras' short names, sent as the service's."""


def job_spec(
    model_id: str,
    *,
    dataset: str = "mnist",
    schedule: pb.PruningSchedule | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    validation_split: float | None = None,
    optimizer: str | None = None,
    learning_rate: float | None = None,
    loss: str | None = None,
    output_losses: Mapping[str, str] | None = None,
    seed: int | None = None,
    max_train_samples: int | None = None,
    include_layers: Sequence[str] = (),
    exclude_layers: Sequence[str] = (),
    block_size: tuple[int, int] | None = None,
    sparsity_m_by_n: tuple[int, int] | None = None,
    include_types: Sequence[str] = (),
    exclude_types: Sequence[str] = (),
    xnnpack_policy: bool = False,
    exports: Sequence[str] = (),
    keras_version: int | None = None,
    structured: pb.StructuredPruning | None = None,
    recipe: str | None = None,
    early_stopping_patience: int | None = None,
    learning_rate_decay: bool | None = None,
    distillation: bool | None = None,
    sensitivity_scan: bool = False,
    budget: pb.AccuracyBudget | None = None,
    report: bool | None = None,
    latency_repeats: int = 0,
    time_limit_s: float = 0.0,
) -> pb.JobSpec:
    """A JobSpec. ``dataset`` is a built-in name ("mnist") or an uploaded dataset's id.

    Every training parameter left at None stays unset, so the server applies its default
    (epochs 2, batch size 128, optimizer adam, the recipe's learning rate, sparse categorical
    cross-entropy from logits, validation split 0.1, no seed, all samples); an explicit
    ``validation_split=0.0`` turns validation off. ``exports`` are format names (see
    :func:`export_format`); empty means the server's default, keras. ``keras_version`` (2 for
    tf_keras, 3 for Keras 3) is the Keras version of the keras and h5 exports; None means the
    uploaded model's. Without ``schedule``, ``polynomial_decay()`` (0.5 to 0.8; to m/n with
    ``sparsity_m_by_n``, which sets the sparsity), unless
    ``structured`` (see :func:`structured`) is given: then the job removes channels only.
    ``recipe`` is "keep_accuracy" (the server's default: final sparsity at about half of the
    steps on a mask update, twice the optimizer's learning rate with cosine decay to a tenth, early
    stop on validation accuracy, distillation from the model as uploaded for classifiers) or
    "plain" (the TFMOT guide's); ``early_stopping_patience``, ``learning_rate_decay`` and
    ``distillation`` override the recipe's choice. ``sensitivity_scan`` lets the worker split
    the target over the layers from a quick per-layer scan. With ``budget`` (see
    :func:`accuracy_budget`) the job searches for the highest sparsity within it instead of
    pruning to the schedule's: the server runs a search sweep and the job ends with the result
    of the trial it picked. ``output_losses`` gives a model of several outputs a loss per output
    name (say ``{"class": "sparse_categorical_crossentropy_from_logits", "box":
    "mean_squared_error"}``); the outputs it does not name take ``loss`` (``"mse"`` and ``"mae"`` are
    taken for ``"mean_squared_error"`` and ``"mean_absolute_error"``). ``report=False``
    skips the report (latency, TensorBoard logs, plots; None = the server's default, on);
    ``latency_repeats`` sets its timed runs per latency figure (0 = 10). ``time_limit_s`` fails
    an attempt of the job running longer with DEADLINE_EXCEEDED (0 = the service's limit alone;
    where both are set the lower applies). ``include_types`` and ``exclude_types`` select layers
    by class name ("Conv2D", "Dense") beside ``include_layers`` and ``exclude_layers``.
    ``block_size`` prunes (rows, columns) blocks of a Dense kernel together;
    ``sparsity_m_by_n=(2, 4)`` zeros 2 of every 4 consecutive input-channel weights (the pattern
    sparse tensor cores run; the sparsity is then m/n, and the schedule says only when the
    masks update); ``xnnpack_policy`` prunes only what XNNPACK runs faster sparse
    (TFMOT's PruneForLatencyOnXNNPack: the whole model, no layer selection).

    Example:
        >>> spec = job_spec("ab" * 32, schedule=polynomial_decay(0.5, 0.8), validation_split=0.0)
        >>> spec.training.HasField("validation_split"), spec.training.epochs
        (True, 0)
    """
    if keras_version not in (None, 2, 3):
        raise ValueError(f"keras_version must be 2, 3 or None, got {keras_version!r}")
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)} or None, got {recipe!r}")
    if not isinstance(dataset, str):
        raise TypeError(
            f"dataset must be a built-in dataset's name or an uploaded dataset's id, got {type(dataset).__name__}: "
            "upload arrays first (client.upload_dataset(...).id)"
        )
    if not isinstance(model_id, str):
        raise TypeError(
            f"model_id must be an uploaded model's id, got {type(model_id).__name__}: upload the model first "
            "(client.upload_model(...).id)"
        )
    is_id = len(dataset) == 64 and all(c in "0123456789abcdef" for c in dataset)
    training = pb.TrainingSpec()
    given = _given(
        epochs=epochs,
        batch_size=batch_size,
        validation_split=validation_split,
        optimizer=optimizer,
        learning_rate=learning_rate,
        loss=LOSS_ALIASES.get(loss, loss) if loss is not None else None,
        seed=seed,
        max_train_samples=max_train_samples,
        early_stopping_patience=early_stopping_patience,
        learning_rate_decay=learning_rate_decay,
        distillation=distillation,
    )
    for name, value in given.items():
        setattr(training, name, value)
    if recipe is not None:
        training.recipe = RECIPES[recipe]
    training.output_losses.update({name: LOSS_ALIASES.get(v, v) for name, v in (output_losses or {}).items()})
    spec = pb.JobSpec(
        model_id=model_id,
        dataset=pb.DatasetRef(artifact_id=dataset) if is_id else pb.DatasetRef(builtin=dataset),
        pruning=pb.PruningSpec(
            schedule=schedule or (None if structured is not None else _default_schedule(sparsity_m_by_n)),
            structured=structured,
            block_size=list(block_size or ()),
            layers=pb.LayerSelection(
                include_names=list(include_layers),
                exclude_names=list(exclude_layers),
                include_types=list(include_types),
                exclude_types=list(exclude_types),
            ),
            sparsity_m_by_n=pb.SparsityMByN(m=sparsity_m_by_n[0], n=sparsity_m_by_n[1]) if sparsity_m_by_n else None,
            policy=pb.PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK if xnnpack_policy else pb.PRUNING_POLICY_UNSPECIFIED,
        ),
        training=training,
        export=pb.ExportSpec(
            formats=[export_format(e) for e in exports],
            keras_version=pb.KerasVersion.ValueType(keras_version or pb.KERAS_VERSION_UNSPECIFIED),
        ),
    )
    spec.pruning.sensitivity_scan = sensitivity_scan
    if budget is not None:
        spec.budget.CopyFrom(budget)
    if report is not None:
        spec.report.enabled = report
    if latency_repeats:  # else no report message: the same bytes as before, for idempotency keys
        spec.report.latency_repeats = latency_repeats
    spec.time_limit_s = time_limit_s  # 0 is not serialized: the same bytes as before
    return spec


def budget_text(budget: pb.AccuracyBudget) -> str:
    """An accuracy budget in words ("" for none).

    Example:
        >>> budget_text(accuracy_budget(max_loss_pp=0.5))
        'at most 0.5 pp of test accuracy lost against the baseline'
    """
    which = budget.WhichOneof("limit")
    if which == "max_loss_pp":
        return f"at most {budget.max_loss_pp:g} pp of test accuracy lost against the baseline"
    if which == "max_relative_loss_percent":
        return f"at most {budget.max_relative_loss_percent:g}% of the baseline's test accuracy lost"
    return ""
