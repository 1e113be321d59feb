"""What a job will do, known before it runs: the checks of spec, model and dataset together
(sample shapes, labels against the output units, selected layers, the schedule against the
real step count) and the plan CreateJob answers with ``validate_only``. No TensorFlow."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from pruning.v1 import pruning_pb2 as pb

from . import defaults, modelcheck, recipe, validation
from .validation import Violation

SPARSE_LOSSES = ("sparse_categorical_crossentropy", "sparse_categorical_crossentropy_from_logits")
# Losses whose labels have the output's units as their last axis (one-hot; 0/1 per unit).
CATEGORICAL_LOSSES = ("categorical_crossentropy", "categorical_crossentropy_from_logits")
BINARY_LOSSES = ("binary_crossentropy", "binary_crossentropy_from_logits")


def unit_labels_problem(
    loss: str, array: str, sample_shape: list[int], units: int, integers: bool = False
) -> str | None:
    """Why labels whose samples have ``sample_shape`` (``integers``: integer-typed) do not fit
    an output of ``units`` units (unknown: <= 0) under ``loss``, a categorical or binary
    cross-entropy, or a regression loss over class indices, or None."""
    if loss not in CATEGORICAL_LOSSES + BINARY_LOSSES + validation.REGRESSION_LOSSES or units <= 1:
        return None
    if sample_shape and sample_shape[-1] == units:
        return None
    if loss in validation.REGRESSION_LOSSES:
        if not integers or sample_shape not in ([], [1]):
            return None  # float targets Keras broadcasts: a choice, not surely a mistake
        # Class indices of a classifier: Keras would broadcast each across the units, and the
        # job train and succeed, fitting every unit to the index.
        return (
            f"{array} holds one integer per sample (class indices?), but {loss} on an output of {units} units "
            f"takes a target per unit (shape [..., {units}]); class indices take the loss "
            "sparse_categorical_crossentropy"
        )
    if loss in CATEGORICAL_LOSSES:
        return (
            f"{array} samples have shape {sample_shape}, but a categorical cross-entropy takes one-hot labels of "
            f"the output's {units} units (shape [..., {units}]); class indices take the loss "
            "sparse_categorical_crossentropy"
        )
    return (
        f"{array} samples have shape {sample_shape}, but a binary cross-entropy on an output of {units} units "
        f"takes a 0/1 label per unit (shape [..., {units}]); class indices take the loss "
        "sparse_categorical_crossentropy"
    )


# The time estimate: a documented heuristic, not a measurement. Fine-tuning costs about six
# floating-point operations per parameter and training sample (forward and backward), at the
# rate below, plus a fixed cost for loading, evaluation and export.
FLOPS_PER_PARAM_SAMPLE = 6
ASSUMED_FLOPS = 2e9
FIXED_SECONDS = 10.0
ESTIMATE_BASIS = (
    f"heuristic: {FLOPS_PER_PARAM_SAMPLE} FLOPs per parameter per training sample and epoch at "
    f"{ASSUMED_FLOPS / 1e9:g} GFLOP/s (a small CPU), plus {FIXED_SECONDS:g} s; convolutions reuse their "
    "weights and take longer, GPUs are faster"
)


def train_steps(n_samples: int, t: pb.TrainingSpec) -> int:
    """Optimizer steps per epoch, as Keras splits off the validation data."""
    return max(1, math.ceil(_kept(n_samples, t.validation_split) / t.batch_size))


def train_batch(n_samples: int, t: pb.TrainingSpec) -> int:
    """Samples in one optimizer step: the batch size, or every sample Keras trains on where
    there are fewer (the batch the report's latency is measured at: a batch size of 65,536 on
    256 samples had the worker make inputs of 65,536 samples that no step ever took)."""
    return max(1, min(t.batch_size, _kept(n_samples, t.validation_split)))


def _kept(n_samples: int, validation_split: float) -> int:
    """Training samples Keras keeps after splitting off ``validation_split`` for validation."""
    return math.floor(n_samples * (1.0 - validation_split))


def split_problem(n_samples: int, validation_split: float) -> str | None:
    """Why ``validation_split`` of ``n_samples`` leaves no sample to train on or none to
    validate on; None when both sides get some (or there is no split)."""
    kept = _kept(n_samples, validation_split)
    if validation_split > 0 and not 0 < kept < n_samples:
        return (
            f"{validation_split:g} of {n_samples} training samples leaves {kept} to train on and "
            f"{n_samples - kept} to validate on; both need at least one"
        )
    return None


@dataclass
class LabelFacts:
    """What is known of the labels of one output without loading them."""

    arrays: list[str]  # the label arrays: y_train and y_test, or y_train.<output name> and y_test.<output name>
    shape: list[int]  # of one sample
    range: list[int] | None = None  # min and max over both splits, when integers
    fraction: tuple[str, float] | None = None  # the first float label that is no whole number, and its array


@dataclass
class DatasetFacts:
    """What is known of a dataset without loading it."""

    field: str  # the spec field that names it
    n_train: int
    n_test: int
    sample_shape: list[int] | None  # None for several inputs (x_train.<input name> arrays)
    labels: dict[str, LabelFacts] = dataclasses.field(default_factory=dict)  # by <output name>; "" for plain y arrays
    input_parts: dict[str, list[int]] | None = None  # sample shape by <input name> of x_train.<input name> arrays

    @property
    def label_parts(self) -> list[str] | None:
        """The <output name>s of y_train.<output name> arrays; None for plain y arrays."""
        return None if not self.labels or "" in self.labels else sorted(self.labels)

    @classmethod
    def of_upload(cls, info: dict[str, Any]) -> DatasetFacts:
        arrays = info["arrays"]
        return cls(
            "spec.dataset.artifact_id",
            arrays["x_train"]["shape"][0],
            arrays["x_test"]["shape"][0],
            None if "parts" in arrays["x_train"] else arrays["x_train"]["shape"][1:],
            _labels(arrays),
            {name: h["shape"][1:] for name, h in arrays["x_train"]["parts"].items()}
            if "parts" in arrays["x_train"]
            else None,
        )

    @classmethod
    def of_builtin(cls, name: str) -> DatasetFacts:
        known = validation.BUILTIN_DATASETS[name]
        return cls(
            "spec.dataset.builtin",
            known["x_train"][0],
            known["x_test"][0],
            known["x_train"][1:],
            {"": LabelFacts(["y_train", "y_test"], [], known["labels"])},
        )


def _labels(arrays: dict[str, Any]) -> dict[str, LabelFacts]:
    """The labels of each output, from the upload's headers (:func:`modelcheck.inspect_dataset`)."""
    ranges, fractions = arrays.get("label_range") or {}, arrays.get("label_fraction") or {}
    y = arrays["y_train"]
    out: dict[str, LabelFacts] = {}
    for part, header in y.get("parts", {"": y}).items():
        keys = [f"y_{split}.{part}" if part else f"y_{split}" for split in ("train", "test")]
        found = [ranges[k] for k in keys if ranges.get(k)]
        fraction = next(((k, fractions[k]) for k in keys if k in fractions), None)
        span = [min(r[0] for r in found), max(r[1] for r in found)] if found else None
        out[part] = LabelFacts(keys, header["shape"][1:], span, fraction)
    return out


def _summary(model_info: dict[str, Any]) -> pb.ModelSummary:
    return json_format.ParseDict(model_info.get("summary") or {}, pb.ModelSummary(), ignore_unknown_fields=True)


def _n_train(spec: pb.JobSpec, data: DatasetFacts) -> int:
    t = spec.training
    return min(data.n_train, t.max_train_samples) if t.max_train_samples else data.n_train


def _schedule_steps(spec: pb.JobSpec, total: int) -> tuple[str, int, int]:
    which = spec.pruning.schedule.WhichOneof("schedule") or "polynomial_decay"
    s = getattr(spec.pruning.schedule, which)
    return f"spec.pruning.schedule.{which}", s.begin_step, s.end_step or total


def _reshape_hint(model_input: Any, sample_shape: Sequence[int]) -> str:
    """How to make samples of the same size fit, such as MNIST's 28 x 28 for a model of
    (28, 28, 1); nothing where the sizes differ."""
    if not isinstance(model_input, list) or not all(isinstance(d, int) for d in model_input):
        return ""
    if math.prod(model_input) != math.prod(sample_shape):
        return ""
    shape = ", ".join(str(d) for d in model_input) + ("," if len(model_input) == 1 else "")
    return f"; start the model with a Reshape(({shape})) to take them, or upload the data shaped {list(model_input)}"


def check(spec: pb.JobSpec, model_info: dict[str, Any], data: DatasetFacts) -> list[Violation]:
    """Every problem of a spec (with its defaults) on this model and dataset, at once."""
    outputs = [o.name for o in _summary(model_info).outputs]
    out = validation.validate_against_model(spec, model_info.get("layers") or [], outputs)
    model_input = model_info.get("input_shape")
    inputs = _summary(model_info).inputs
    if len(inputs) > 1:
        out += _inputs_fit(inputs, data)
    elif data.sample_shape is not None and not modelcheck.shapes_fit(model_input, data.sample_shape):
        out.append(
            (
                data.field,
                f"samples of shape {data.sample_shape} do not fit the model input {model_input}"
                + _reshape_hint(model_input, data.sample_shape),
            )
        )
    out += _dataset_fits(spec, outputs, data)
    out += _losses_fit(spec, _summary(model_info).outputs)
    mixed = model_info.get("mixed_precision") or []
    if mixed and (spec.pruning.HasField("schedule") or spec.pruning.HasField("structured")):
        # Weight pruning: TFMOT's wrappers do not take the policy. Structured: float16 rounding
        # fails the translation's equivalence check, bfloat16 the Keras 3 export.
        out.append(
            (
                "spec.model_id",
                "the model computes in mixed precision, which pruning does not take: save it with the "
                f"float32 dtype policy (layers {', '.join(mixed[:5])}{', ...' if len(mixed) > 5 else ''})",
            )
        )
    out += _m_by_n_dtypes_fit(spec, model_info)
    out += _structured_layers_reachable(spec, model_info)
    out += _h5_export_loads(spec, model_info)
    if spec.pruning.policy == pb.PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK and (
        missing := model_info.get("xnnpack_missing")
    ):
        # the job failed on TFMOT's own check after the baseline's evaluation
        out.append(
            (
                "spec.pruning.policy",
                f"PRUNE_FOR_LATENCY_ON_XNNPACK needs {' and '.join(missing)}, which the model lacks (TFMOT's policy)",
            )
        )
    out += _labels_fit(spec, _summary(model_info).outputs, data)
    out += _keras3_loader_fits(spec, model_info)
    layers = _summary(model_info).layers
    model_layers = [tuple(layer) for layer in model_info.get("layers") or []]
    classes = validation.unknown_types(spec, model_layers, modelcheck.ALLOWED_CLASSES)
    out += classes
    pruned = pruned_layer_weights(spec, model_info)
    unknown = sorted(set(spec.pruning.layer_sparsity) - set(pruned))
    if layers and unknown:
        out.append(("spec.pruning.layer_sparsity", f"names layers the job does not prune: {unknown[:20]}"))
    if (
        layers
        and not classes  # what they say is why
        and not any(
            layer.prunable and validation.selected(layer.class_name, layer.name, spec.pruning.layers)
            for layer in layers
        )
    ):
        whole = model_info.get("left_whole") or {}
        kinds = {layer.name: layer.class_name for layer in layers}
        left = sorted(n for n in whole if n in kinds and validation.selected(kinds[n], n, spec.pruning.layers))
        why = f"; left whole: {', '.join(f'{n} ({whole[n]})' for n in left[:5])}{', ...' if len(left) > 5 else ''}"
        out.append(
            (
                "spec.pruning.layers",
                "selects no prunable layer (Dense, Conv, Embedding, recurrent ...)" + (why if left else ""),
            )
        )
    total = train_steps(_n_train(spec, data), spec.training) * spec.training.epochs
    prefix, begin, end = _schedule_steps(spec, total)
    if end > total:
        out.append(
            (
                f"{prefix}.end_step",
                f"ends at step {end}, after the last fine-tuning step {total} "
                f"({spec.training.epochs} epochs of {total // spec.training.epochs} steps)",
            )
        )
    if begin >= total:
        out.append((f"{prefix}.begin_step", f"starts at step {begin}, but fine-tuning has only {total} steps"))
    decay = spec.pruning.schedule.polynomial_decay
    explicit = spec.pruning.schedule.HasField("polynomial_decay") and decay.end_step and decay.frequency
    if explicit and not recipe.steps_reaching_final(decay):
        out.append(
            (
                f"{prefix}.frequency",
                f"masks update every {decay.frequency} steps from step {begin}: none falls on end_step "
                f"{decay.end_step}, so the final sparsity is never applied; make end_step - begin_step a multiple "
                f"of {decay.frequency}, or leave either unset",
            )
        )
    return out


def _labels_fit(spec: pb.JobSpec, outputs: Sequence[pb.TensorSummary], data: DatasetFacts) -> list[Violation]:
    """Under a sparse categorical loss, each output's labels: one whole class index per sample,
    within the output's units (where the configuration tells them)."""
    out: list[Violation] = []
    for output in outputs:
        labels = data.labels.get(output.name, data.labels.get("") if len(outputs) == 1 else None)
        if labels is None:
            continue  # no such label arrays: _dataset_fits says so
        loss = validation.output_loss(spec.training, output.name)
        units = output.shape[-1] if output.shape else -1
        integers = labels.range is not None
        if problem := unit_labels_problem(loss, labels.arrays[0], labels.shape, units, integers):
            out.append((data.field, problem))
        if loss not in SPARSE_LOSSES:
            continue
        which = f"output {output.name!r} ({', '.join(labels.arrays)})" if labels.arrays[0] != "y_train" else ""
        if units > 0 and labels.shape not in ([], [1]):
            out.append(
                (
                    data.field,
                    f"{labels.arrays[0][:40]} samples have shape {labels.shape[:4]}, but a sparse categorical loss "
                    "takes a class index per sample (shape [] or [1]); one-hot labels take the loss "
                    + (
                        "categorical_crossentropy"
                        if output.activation == "softmax"
                        else "categorical_crossentropy_from_logits"
                    ),
                )
            )
        if labels.fraction is not None:
            array, value = labels.fraction
            out.append(
                (
                    data.field,
                    f"{array} holds {value:g}, but a sparse categorical loss takes whole class indices; "
                    "targets of a regression take a loss such as mean_squared_error",
                )
            )
        if units > 0 and labels.range is not None and (labels.range[0] < 0 or labels.range[1] >= units):
            low, high = labels.range
            out.append(
                (
                    data.field,
                    f"labels {f'of {which} ' if which else ''}run from {low} to {high}, but "
                    f"{'it has' if which else 'the model has'} {units} output units "
                    f"(labels must be in [0, {units - 1}])",
                )
            )
    return out


def _units(output: pb.TensorSummary) -> int | None:
    """An output's last dimension where the configuration gives it."""
    return int(output.shape[-1]) if output.shape and output.shape[-1] > 0 else None


def _losses_fit(spec: pb.JobSpec, summary_outputs: Sequence[pb.TensorSummary]) -> list[Violation]:
    """``output_losses`` names outputs of the model; no output of one unit has a sparse
    categorical cross-entropy (a softmax over one unit is 1 whatever it learns: labels past 0
    fail the job, and the binary classifier it is takes the binary cross-entropy)."""
    outputs = [o.name for o in summary_outputs]
    out = [
        (f"spec.training.output_losses[{name[:200]}]", f"names no output of the model; its outputs are {outputs[:20]}")
        for name in sorted(set(spec.training.output_losses) - set(outputs))[:20]
    ]
    for o in summary_outputs:
        loss = validation.output_loss(spec.training, o.name) or defaults.LOSS
        if _units(o) == 1 and loss.startswith("sparse_categorical_crossentropy"):
            field = (
                f"spec.training.output_losses[{o.name[:200]}]"
                if o.name in spec.training.output_losses
                else "spec.training.loss"
            )
            fix = {
                "sigmoid": "give binary_crossentropy",
                "softmax": "a softmax of 1 unit is always 1: end it in a sigmoid, with binary_crossentropy",
            }.get(
                o.activation, "give binary_crossentropy_from_logits (a classifier) or mean_squared_error (a regression)"
            )
            out.append((field, f"output {o.name[:40]!r} has 1 unit: {loss} needs one per class; {fix}"))
    return out


def budget_problem(t: pb.TrainingSpec, model_info: dict[str, Any]) -> str | None:
    """Why an accuracy budget cannot be kept on this model under ``t``'s losses (none of its
    outputs has a classification loss, so there is no accuracy), or None."""
    return validation.budget_loss_problem(t, [o.name for o in _summary(model_info).outputs])


def _inputs_fit(inputs: Sequence[pb.TensorSummary], data: DatasetFacts) -> list[Violation]:
    """One x array per input of a model of several, each of the input's sample shape."""
    names = sorted(t.name for t in inputs)
    if data.input_parts is None:
        return [
            (
                data.field,
                f"the model has {len(inputs)} inputs {names}; store one array per input, named "
                "x_train.<input name> and x_test.<input name>",
            )
        ]
    if sorted(data.input_parts) != names:
        return [(data.field, f"x arrays for inputs {sorted(data.input_parts)}; the model's inputs are {names}")]
    out: list[Violation] = []
    for t in inputs:
        wanted = [None if d < 0 else int(d) for d in t.shape] if t.shape else None
        if not modelcheck.shapes_fit(wanted, data.input_parts[t.name]):
            out.append(
                (
                    data.field,
                    f"x_train.{t.name} samples of shape {data.input_parts[t.name]} do not fit the input {wanted}",
                )
            )
    return out


def _dataset_fits(spec: pb.JobSpec, outputs: list[str], data: DatasetFacts) -> list[Violation]:
    """Samples on both sides of the splits, and one label array per output of a model of several."""
    out: list[Violation] = []
    if data.n_train == 0 or data.n_test == 0:
        out.append((data.field, f"x_train and x_test need a sample each; they hold {data.n_train} and {data.n_test}"))
    n = _n_train(spec, data)
    if n and (problem := split_problem(n, spec.training.validation_split)):
        out.append(("spec.training.validation_split", problem))
    if len(outputs) > 1 and data.label_parts is None:
        out.append(
            (
                data.field,
                f"the model has {len(outputs)} outputs {sorted(outputs)}; store one array per output, named "
                "y_train.<output name> and y_test.<output name>",
            )
        )
    elif outputs and data.label_parts is not None and data.label_parts != sorted(outputs):
        out.append((data.field, f"y arrays for outputs {data.label_parts}; the model's outputs are {sorted(outputs)}"))
    return out


def pruned_layer_weights(spec: pb.JobSpec, model_info: dict[str, Any]) -> dict[str, int]:
    """Parameters of each layer the spec prunes, from the upload's summary."""
    return {
        layer.name: layer.params
        for layer in _summary(model_info).layers
        if layer.prunable and validation.selected(layer.class_name, layer.name, spec.pruning.layers)
    }


def steps_per_epoch(spec: pb.JobSpec, data: DatasetFacts) -> int:
    """Optimizer steps per epoch of a spec (with its defaults) on this dataset."""
    return train_steps(_n_train(spec, data), spec.training)


# Why a layer of an uploaded tf_keras model is out of channel surgery's reach, which works on
# the outer model's own layers (a Keras 3 model's nested models are opened up by the bridge).
_OUT_OF_SURGERY = {
    "nested": "is inside a model nested in the tf_keras model, and structured pruning cuts the outer model's "
    "own layers only: save the model flat, or with Keras 3, whose nested models are opened up",
    "wrapped": "is inside a Bidirectional or TimeDistributed wrapper, whose channels structured pruning leaves whole",
}


def _structured_layers_reachable(spec: pb.JobSpec, model_info: dict[str, Any]) -> list[Violation]:
    """``structured.layer_ratios`` naming a layer channel surgery cannot reach: the upload's
    layer list has it, so validation let it through, and the job failed 'no layer' after loading.
    A structured-only job on a model with no layer to shrink at all (its only Conv or Dense is
    the output): the job would end at its first step having removed nothing."""
    whole = model_info.get("left_whole") or {}
    out: list[Violation] = []
    for name in sorted(spec.pruning.structured.layer_ratios):
        why = _OUT_OF_SURGERY.get(whole.get(name, ""))
        if why:
            out.append((f"spec.pruning.structured.layer_ratios[{name}]", f"{name!r} {why}"))
    p, layers = spec.pruning, model_info.get("layers") or []
    if p.HasField("structured") and not p.HasField("schedule") and layers:
        outputs = {o.name for o in _summary(model_info).outputs}
        makers = [(kind, name) for kind, name in layers if kind in validation.CHANNEL_MAKERS]
        cut = [
            name
            for kind, name in makers
            if name not in outputs
            and whole.get(name) not in ("frozen", *_OUT_OF_SURGERY)
            and validation.selected(kind, name, p.layers)
        ]
        if not cut:
            kept = ", ".join(name for _, name in makers[:5]) or "none"
            out.append(
                (
                    "spec.pruning.structured",
                    "the model has no Conv or Dense layer whose channels structured pruning can remove (a model "
                    f"output, a frozen or nested layer or one not selected keeps its width; its Conv and Dense: {kept}); "
                    "prune weights with a schedule instead",
                )
            )
    return out


def _keras_out(spec: pb.JobSpec, model_info: dict[str, Any]) -> int:
    """The Keras version of the job's .keras and .h5 exports: asked for, else the upload's."""
    return spec.export.keras_version or int(model_info.get("keras_version") or 2)


def _h5_export_loads(spec: pb.JobSpec, model_info: dict[str, Any]) -> list[Violation]:
    """An .h5 export in Keras 3 of a functional model with a padding mask or a tensor operation
    (``x / 255.0``): Keras 3 writes either as an operation its own .h5 loader does not know, and
    the job failed after its fine-tuning (or handed back a file that loads nowhere)."""
    mask, operation = model_info.get("h5_mask") or "", model_info.get("h5_operation") or ""
    version_out = _keras_out(spec, model_info)
    if not (mask or operation) or version_out != 3 or pb.EXPORT_FORMAT_H5 not in spec.export.formats:
        return []
    what = f"the padding mask of {mask!r}" if mask else f"the tensor operation {operation} (x / 255.0, h + h2, ...)"
    return [
        (
            "spec.export.formats",
            f"h5: Keras 3 writes {what} into an .h5 file as an operation it cannot read back; export keras "
            "instead, or ask for Keras 2 files (export keras_version 2)",
        )
    ]


def _m_by_n_dtypes_fit(spec: pb.JobSpec, model_info: dict[str, Any]) -> list[Violation]:
    """M-by-n sparsity on a layer computing in float16, bfloat16 or float64: TFMOT's masks for
    the pattern are float32 and fail to assign to its kernel at the first training step."""
    if not spec.pruning.HasField("sparsity_m_by_n"):
        return []
    other = model_info.get("other_dtypes") or {}
    bad = [f"{name} ({other[name]})" for name in pruned_layer_weights(spec, model_info) if name in other]
    if not bad:
        return []
    return [
        (
            "spec.pruning.sparsity_m_by_n",
            f"takes layers computing in float32 only; exclude the layers {', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''} or save them with the float32 dtype policy",
        )
    ]


def _keras3_loader_fits(spec: pb.JobSpec, model_info: dict[str, Any]) -> list[Violation]:
    """A job whose pruned model goes back to Keras 3 through Keras 3's loader of Keras 2 files
    (a Keras 3 model with channels removed; a tf_keras upload asked back as Keras 3) fails
    there, after its training, on a layer whose axis that loader drops (a Normalization with
    axis None, a LayerNormalization over several axes): refused before it is queued."""
    lost = model_info.get("axes_lost") or []
    version_in = int(model_info.get("keras_version") or 2)
    version_out = _keras_out(spec, model_info)
    keras_files = {pb.EXPORT_FORMAT_KERAS, pb.EXPORT_FORMAT_H5} & set(spec.export.formats)
    nested = model_info.get("nested_in_functional") or ""
    if nested and version_in == 2 and version_out == 3 and keras_files:
        return [
            (
                "spec.export.keras_version",
                f"the tf_keras functional model holds the nested model {nested[:60]!r}, which Keras 3's loader of "
                "Keras 2 files cannot connect (a graph with disconnected nodes): ask for Keras 2 files (export "
                "keras_version 2), or save the model flat",
            )
        ]
    if not lost or version_out != 3 or not keras_files:
        return []
    if version_in == 3 and spec.pruning.HasField("structured"):
        field, through = "spec.pruning.structured", "a Keras 3 model with channels removed is read back"
    elif version_in == 2:
        field, through = "spec.export.keras_version", "a tf_keras model asked back as Keras 3 is read"
    else:
        return []
    name, cls, axis = lost[0]
    axis = axis or None  # () and [] are how Keras saves None
    more = f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""
    return [
        (
            field,
            f"layer {str(name)[:60]!r} ({cls}, axis={axis}){more} cannot come back as Keras 3: {through} by "
            "Keras 3's loader of Keras 2 files, which keeps an axis only when it is one number; give the layer "
            "axis=-1, or ask for Keras 2 files (export keras_version 2)"
            + (", or prune weights instead of channels" if field == "spec.pruning.structured" else ""),
        )
    ]


SHORT_TO_SAY = 0.001  # a schedule's end short of its final sparsity by more than this is said


# Past this final sparsity the plan warns of the accuracy it will cost.
EXTREME = 0.95


def _m_by_n_sets_the_sparsity(spec: pb.JobSpec) -> str | None:
    """With an m-by-n pattern, a schedule whose final sparsity is not m/n: the job reaches m/n
    whatever the schedule says (it says only when the masks update), and a job asked for 0.8
    that ended at 0.5 said nothing of it."""
    p = spec.pruning
    if not p.HasField("sparsity_m_by_n") or not p.HasField("schedule"):
        return None
    final = validation.schedule_final(p.schedule)
    pattern = validation.target_sparsity(p)
    if abs(final - pattern) <= 1e-3:
        return None
    mn = p.sparsity_m_by_n
    return (
        f"spec.pruning.schedule: its final sparsity {final:g} is not what the job reaches: sparsity_m_by_n "
        f"{mn.m}:{mn.n} zeroes {mn.m} of every {mn.n} weights ({pattern:g}); the schedule says only when the masks "
        "update"
    )


def _short_of_final(spec: pb.JobSpec) -> str | None:
    """What a polynomial schedule whose last mask update comes before its end step (the plain
    recipe's, the TFMOT guide's end at the last step with masks every 100, on a short run)
    leaves: the kernels at the sparsity of that update. Said when more than SHORT_TO_SAY short
    of the final sparsity; more than SPARSITY_TOLERANCE short, the job fails its sparsity check
    after training. None when the end is reached (or missed by less)."""
    decay = spec.pruning.schedule.polynomial_decay
    if not spec.pruning.schedule.HasField("polynomial_decay") or not decay.frequency:
        return None
    if spec.pruning.HasField("sparsity_m_by_n"):  # the pattern sets the sparsity, not the schedule
        return None
    span = decay.end_step - decay.begin_step
    if span <= 0 or recipe.steps_reaching_final(decay):
        return None
    last = decay.begin_step + span // decay.frequency * decay.frequency
    ramp = decay.final_sparsity - decay.initial_sparsity
    short = ramp * (1 - (last - decay.begin_step) / span) ** (decay.power or defaults.POWER)
    if short <= SHORT_TO_SAY:
        return None
    fails = short > defaults.SPARSITY_TOLERANCE
    outcome = (
        f"short of the final {decay.final_sparsity:g} by more than {defaults.SPARSITY_TOLERANCE:g}, and the job fails "
        "its sparsity check"
        if fails
        else f"not the final {decay.final_sparsity:g} (within the sparsity check's {defaults.SPARSITY_TOLERANCE:g})"
    )
    return (
        f"the last mask update comes at step {last}, before the schedule's end step {decay.end_step} (masks every "
        f"{decay.frequency} steps from step {decay.begin_step}): the kernels end about "
        f"{decay.final_sparsity - short:.4f} sparse, {outcome}; give an end_step a multiple of the "
        "frequency after begin_step, or use the keep_accuracy recipe"
    )


def make_plan(spec: pb.JobSpec, model_info: dict[str, Any], data: DatasetFacts) -> pb.JobPlan:
    """The plan of a checked spec (with its defaults) on this model and dataset."""
    t = spec.training
    n_train = _n_train(spec, data)
    n_validation = n_train - math.floor(n_train * (1.0 - t.validation_split))
    steps = train_steps(n_train, t)
    _, begin, end = _schedule_steps(spec, steps * t.epochs)
    summary = _summary(model_info)
    target = validation.target_sparsity(spec.pruning)
    plan = pb.JobPlan(
        train_samples=n_train - n_validation,
        validation_samples=n_validation,
        test_samples=data.n_test,
        steps_per_epoch=steps,
        total_steps=steps * t.epochs,
        schedule_begin_step=begin,
        schedule_end_step=end,
        keras_version=summary.keras_version or model_info.get("keras_version", 2),
        spec=spec,
        estimate_basis=ESTIMATE_BASIS,
    )
    inputs = model_info.get("kernel_inputs") or {}
    mn = spec.pruning.sparsity_m_by_n if spec.pruning.HasField("sparsity_m_by_n") else None
    for layer in summary.layers if spec.pruning.HasField("schedule") else []:  # weight pruning's layers
        if layer.prunable and validation.selected(layer.class_name, layer.name, spec.pruning.layers):
            final = spec.pruning.layer_sparsity.get(layer.name, target)
            cols = inputs.get(layer.name)
            if mn is not None and cols:  # as the job counts and warns (recipe.m_by_n_sparsity, check_shapes)
                final = validation.m_by_n_zeros(cols, mn) / cols
                if note := validation.m_by_n_leaves_dense(f"layer {layer.name} ({layer.class_name})", cols, mn):
                    plan.warnings.append(note)
            plan.layers.add(name=layer.name, class_name=layer.class_name, weights=layer.params, final_sparsity=final)
    if warning := _short_of_final(spec):
        plan.warnings.append(warning)
    if warning := _m_by_n_sets_the_sparsity(spec):
        plan.warnings.append(warning)
    if spec.pruning.HasField("schedule") and not spec.pruning.HasField("sparsity_m_by_n") and target > EXTREME:
        plan.warnings.append(
            f"spec.pruning.schedule: a final sparsity of {target:g} keeps about {1 - target:.2g} of the pruned "
            "layers' weights: expect a large loss of accuracy (the job warns if it falls to chance); an accuracy "
            "budget finds the highest sparsity within a loss you choose"
        )
    for output in summary.outputs:
        if warning := validation.logits_warning(
            output.name, output.activation, validation.output_loss(t, output.name) or defaults.LOSS, _units(output)
        ):
            plan.warnings.append(warning)
    samples = (n_train - n_validation) * t.epochs
    plan.estimated_seconds = FIXED_SECONDS + FLOPS_PER_PARAM_SAMPLE * summary.total_params * samples / ASSUMED_FLOPS
    return plan
