"""Builders for the job spec, with the service's defaults."""

from __future__ import annotations

from pruning.v1 import pruning_pb2 as pb

_PREFIX = "EXPORT_FORMAT_"

#: Export format names ("keras", "h5", "saved_model", "tflite", "tflite_int8") to the contract's
#: enum values. The names are derived from the contract's ExportFormat enum, which owns them;
#: an artifact's ``format`` field carries the same name.
EXPORT_FORMATS: dict[str, int] = {
    name.removeprefix(_PREFIX).lower(): value
    for name, value in pb.ExportFormat.items()
    if value != pb.EXPORT_FORMAT_UNSPECIFIED
}


def export_format(name: str) -> int:
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
    return pb.ExportFormat.Name(value).removeprefix(_PREFIX).lower()


def polynomial_decay(
    initial_sparsity: float = 0.5, final_sparsity: float = 0.8, *, begin_step: int = 0, end_step: int = 0,
    power: float = 3.0, frequency: int = 100,
) -> pb.PruningSchedule:
    """PolynomialDecay schedule; end_step 0 means the last fine-tuning step.

    Example:
        >>> polynomial_decay(0.5, 0.8).polynomial_decay.final_sparsity
        0.8
    """
    return pb.PruningSchedule(
        polynomial_decay=pb.PolynomialDecay(
            initial_sparsity=initial_sparsity, final_sparsity=final_sparsity, begin_step=begin_step,
            end_step=end_step, power=power, frequency=frequency,
        )
    )


def constant_sparsity(
    target_sparsity: float, *, begin_step: int = 0, end_step: int = 0, frequency: int = 100
) -> pb.PruningSchedule:
    """ConstantSparsity schedule; end_step 0 means the last fine-tuning step."""
    return pb.PruningSchedule(
        constant_sparsity=pb.ConstantSparsity(
            target_sparsity=target_sparsity, begin_step=begin_step, end_step=end_step, frequency=frequency
        )
    )


def job_spec(
    model_id: str, *, dataset: str = "mnist", schedule: pb.PruningSchedule | None = None,
    epochs: int = 2, batch_size: int = 128, validation_split: float = 0.1, optimizer: str = "adam",
    learning_rate: float = 0.0, loss: str = "", seed: int = 0, max_train_samples: int = 0,
    include_layers: tuple[str, ...] = (), exclude_layers: tuple[str, ...] = (),
    block_size: tuple[int, int] | None = None, exports: tuple[str, ...] = ("keras",),
) -> pb.JobSpec:
    """A JobSpec. ``dataset`` is a built-in name ("mnist") or an uploaded dataset's id.

    Example:
        >>> spec = job_spec("ab" * 32, schedule=polynomial_decay(0.5, 0.8))
    """
    is_id = len(dataset) == 64 and all(c in "0123456789abcdef" for c in dataset)
    return pb.JobSpec(
        model_id=model_id,
        dataset=pb.DatasetRef(artifact_id=dataset) if is_id else pb.DatasetRef(builtin=dataset),
        pruning=pb.PruningSpec(
            schedule=schedule or polynomial_decay(),
            block_size=list(block_size or ()),
            layers=pb.LayerSelection(include_names=list(include_layers), exclude_names=list(exclude_layers)),
        ),
        training=pb.TrainingSpec(
            epochs=epochs, batch_size=batch_size, validation_split=validation_split, optimizer=optimizer,
            learning_rate=learning_rate, loss=loss, seed=seed, max_train_samples=max_train_samples,
        ),
        export=pb.ExportSpec(formats=[export_format(e) for e in exports]),
    )
