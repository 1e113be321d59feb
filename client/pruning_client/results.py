"""Typed views of job results, model summaries and job plans; each keeps the proto as ``.raw``."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from pruning.v1 import pruning_pb2 as pb

from .specs import REPORT_FORMATS, budget_text, exports

__all__ = [
    "JobPlan",
    "LayerPlan",
    "LayerSparsity",
    "LayerSummary",
    "ModelSummary",
    "PruneResult",
    "TensorSummary",
]


@dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one layer's kernel, measured on the stripped model."""

    name: str
    type: str
    pruned: bool
    """Whether the layer was wrapped for pruning."""
    weights: int
    """Weights of the layer's kernel (its bias left out)."""
    nonzero: int
    sparsity: float
    target_sparsity: float = 0.0
    """The final sparsity the layer was pruned to (0 for a layer not pruned)."""


@dataclass(frozen=True)
class PruneResult:
    """What a finished job measured.

    Example:
        >>> result = job.result(timeout=600)                 # doctest: +SKIP
        >>> print(result.pruned_accuracy, result.compression_ratio)  # doctest: +SKIP
        0.9712 3.02
    """

    baseline_accuracy: float | None
    """None under a regression loss (mean_squared_error, mean_absolute_error): the losses
    are then the quality figures. Also None for a job that skipped its baseline."""
    baseline_loss: float | None
    """None for a job that skipped its baseline."""
    pruned_accuracy: float | None
    """None under a regression loss."""
    pruned_loss: float
    accuracy_delta: float | None
    """pruned_accuracy - baseline_accuracy; None when either is."""
    overall_sparsity: float
    """Zero fraction over all parameters of the stripped model."""
    pruned_kernel_sparsity: float
    """Zero fraction over the kernels of the pruned layers."""
    layers: list[LayerSparsity]
    total_params: int
    nonzero_params: int
    size_before_raw: int
    size_before_gzip: int
    size_after_raw: int
    size_after_gzip: int
    compression_ratio: float
    """size_before_gzip / size_after_gzip."""
    fine_tune_seconds: float
    device: str
    model_artifact_id: str
    """The pruned model (the first export)."""
    artifact_ids: dict[str, str]
    """Export format name ("keras", "saved_model", ...) to artifact id."""
    report_ids: dict[str, str]
    """The report's files ("history_png", "layers_png", "tensorboard") to artifact id."""
    keras_version_in: int
    """Keras version of the uploaded model: 2 (tf_keras) or 3 (0 from a server that does not say)."""
    keras_version_out: int
    """Keras version of the KERAS and H5 exports."""
    conversion_max_abs_diff: float
    """A Keras 3 model is pruned as an equivalent tf_keras model: the largest absolute
    difference of the two models' outputs on a probe batch (0 without a conversion)."""
    export_conversion_max_abs_diff: float
    """The same for the pruned model converted back to Keras 3 on export."""
    raw: pb.PruneResult = field(repr=False)

    @property
    def converted(self) -> bool:
        """Whether the model went through the Keras 3 <-> tf_keras translation (a Keras 3
        model in, or Keras 3 exports)."""
        return 3 in (self.keras_version_in, self.keras_version_out)

    @property
    def recipe(self) -> pb.RecipeResult:
        """The fine-tuning recipe as it ran, with its resolved choices."""
        return self.raw.recipe

    @property
    def history(self) -> list[pb.EpochSummary]:
        """One summary per fine-tuning epoch (loss, accuracy, validation figures, sparsity)."""
        return list(self.raw.history)

    @property
    def latency(self) -> list[pb.Latency]:
        """Latency measured on the worker, before (the model as uploaded) and after pruning."""
        return list(self.raw.latency)

    @property
    def phase_seconds(self) -> dict[str, float]:
        """Seconds the worker spent in each phase ("inputs", "load", "baseline", ...)."""
        return dict(self.raw.phase_seconds)

    @property
    def export_accuracy(self) -> list[pb.ExportAccuracy]:
        """The TFLite exports' own test accuracy, measured on the files."""
        return list(self.raw.export_accuracy)

    @property
    def structured(self) -> pb.StructuredResult | None:
        """What structured pruning did (widths, layers left whole, parameters, FLOPs,
        latency before and after); None when the job did not ask for it."""
        return self.raw.structured if self.raw.HasField("structured") else None

    def how_pruned(self, layer: LayerSparsity | pb.LayerSparsity) -> str:
        """The layer table's "pruned" word: "yes" (magnitude pruned), "channels" (output
        channels cut by structured pruning, its kernel left dense), "yes, channels" (both) or
        "no"."""
        s = self.structured
        cut = s is not None and any(x.name == layer.name and x.channels_after < x.channels_before for x in s.layers)
        return {(True, True): "yes, channels", (True, False): "yes", (False, True): "channels"}.get(
            (bool(layer.pruned), cut), "no"
        )

    def structured_lines(self) -> list[tuple[str, str]]:
        """(label, value) rows about structured pruning; empty when it did not run."""
        s = self.structured
        if s is None:
            return []
        rows = [
            ("structured", f"{s.groups_pruned} of {s.groups} channel groups cut ({s.criterion})"),
            ("parameters", f"{s.params_before:,} -> {s.params_after:,}"),
            ("FLOPs per sample", f"{s.flops_before:,} -> {s.flops_after:,}"),
        ]
        for x in s.latency:
            rows.append(
                (
                    f"latency {x.runtime} batch {x.batch_size}",
                    f"{x.before_ms:.3f} -> {x.after_ms:.3f} ms ({speed_up(x)}, {x.device}, median of {x.repeats})",
                )
            )
        rows += [(f"left whole: {x.name}", x.reason) for x in s.left_whole]
        return rows

    def export_accuracy_lines(self) -> list[tuple[str, str]]:
        """(label, value) rows of the TFLite exports' own test accuracy, beside the Keras
        model's; empty without a TFLite export (or for a model the check does not fit)."""
        keras = self.pruned_accuracy
        return [
            (
                f"{x.format} export",
                f"test accuracy {x.accuracy:.4f} on {x.samples:,} samples"
                + (f" ({points(x.accuracy - keras)} against the Keras model)" if keras is not None else ""),
            )
            for x in self.raw.export_accuracy
        ]

    def size_label(self, kind: str) -> str:
        """ "model size (``kind``)", naming the format whose files the sizes are when it is not
        the default .keras (the first export's: an int8 .tflite's sizes read as the Keras
        model's beside its accuracy)."""
        fmt = self.raw.artifacts[0].format if self.raw.artifacts else ""
        return f"model size ({kind}{', ' + fmt if fmt and fmt != 'keras' else ''})"

    def conversion_lines(self) -> list[tuple[str, str]]:
        """(label, value) rows about the Keras conversion; empty when none took place."""
        if not self.converted:
            return []
        rows = [("keras version", f"{self.keras_version_in} in, {self.keras_version_out} out")]
        if self.keras_version_in == 3:  # a tf_keras upload is pruned as it is: no conversion on the way in
            rows.append(("conversion max |diff|", f"{self.conversion_max_abs_diff:.3g} (uploaded model as tf_keras)"))
        if self.keras_version_out == 3:
            rows.append(
                ("export conversion max |diff|", f"{self.export_conversion_max_abs_diff:.3g} (pruned model exported)")
            )
        return rows

    @classmethod
    def from_proto(cls, r: pb.PruneResult) -> PruneResult:
        return cls(
            baseline_accuracy=r.baseline.accuracy if r.baseline.HasField("accuracy") else None,
            baseline_loss=r.baseline.loss if r.HasField("baseline") else None,
            pruned_accuracy=r.pruned.accuracy if r.pruned.HasField("accuracy") else None,
            pruned_loss=r.pruned.loss,
            accuracy_delta=r.accuracy_delta if r.HasField("accuracy_delta") else None,
            overall_sparsity=r.overall_sparsity,
            pruned_kernel_sparsity=r.pruned_kernel_sparsity,
            layers=[
                LayerSparsity(x.name, x.type, x.pruned, x.weights, x.nonzero, x.sparsity, x.target_sparsity)
                for x in r.layers
            ],
            total_params=r.total_params,
            nonzero_params=r.nonzero_params,
            size_before_raw=r.size_before.raw_bytes,
            size_before_gzip=r.size_before.gzip_bytes,
            size_after_raw=r.size_after.raw_bytes,
            size_after_gzip=r.size_after.gzip_bytes,
            compression_ratio=r.compression_ratio,
            fine_tune_seconds=r.fine_tune_seconds,
            device=r.device,
            model_artifact_id=r.artifacts[0].id if r.artifacts else "",
            artifact_ids={a.format: a.id for a in exports(r.artifacts)},
            report_ids={a.format: a.id for a in r.artifacts if a.format in REPORT_FORMATS},
            keras_version_in=r.keras_version_in,
            keras_version_out=r.keras_version_out,
            conversion_max_abs_diff=r.conversion_max_abs_diff,
            export_conversion_max_abs_diff=r.export_conversion_max_abs_diff,
            raw=r,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (without ``raw``), and what only ``raw`` has:
        ``structured``, ``recipe``, ``history``, ``latency`` and ``phase_seconds`` (counts as
        numbers, not the strings proto3's JSON makes of 64-bit integers)."""
        out = {k: v for k, v in self.__dict__.items() if k != "raw"}
        out["layers"] = [dict(layer.__dict__) for layer in self.layers]
        r = self.raw
        for name in ("structured", "recipe"):
            if r.HasField(name):
                out[name] = plain(getattr(r, name))
        out["history"] = [plain(epoch) for epoch in r.history]
        out["latency"] = [plain(x) for x in r.latency]
        out["phase_seconds"] = dict(r.phase_seconds)
        out["export_accuracy"] = [plain(x) for x in r.export_accuracy]
        return out

    def _repr_html_(self) -> str:
        """Tables for notebooks, as the CLI prints the result: baseline against pruned, the
        figures (the TFLite exports' own accuracy, the recipe as run), the measured latency,
        then one row per layer."""
        rows = [
            ("test accuracy", figure(self.baseline_accuracy), figure(self.pruned_accuracy)),
            ("test loss", figure(self.baseline_loss), figure(self.pruned_loss)),
            (self.size_label("raw bytes"), f"{self.size_before_raw:,}", f"{self.size_after_raw:,}"),
            (self.size_label("gzip bytes"), f"{self.size_before_gzip:,}", f"{self.size_after_gzip:,}"),
        ]
        summary = [
            ("accuracy delta", points(self.accuracy_delta)),
            ("gzip compression", f"{self.compression_ratio:.2f}x"),
            ("sparsity of the pruned kernels", f"{self.pruned_kernel_sparsity:.4f}"),
            ("sparsity of all parameters", f"{self.overall_sparsity:.4f}"),
            ("non-zero parameters", f"{self.nonzero_params:,} of {self.total_params:,}"),
            ("fine-tuning", f"{self.fine_tune_seconds:.1f} s on {self.device}"),
            *self.export_accuracy_lines(),
            *([("recipe", recipe_text(self.raw.recipe))] if self.raw.HasField("recipe") else []),
            *self.conversion_lines(),
            *self.structured_lines(),
        ]
        latency = [
            (x.runtime, x.device, str(x.batch_size), f"{x.before_ms:.3f}", f"{x.after_ms:.3f}", speed_up(x))
            for x in self.raw.latency
        ]
        layers = [
            (x.name, x.type, self.how_pruned(x), f"{x.weights:,}", f"{x.nonzero:,}", f"{x.sparsity:.4f}")
            for x in self.layers
        ]
        return "\n".join(
            [
                _table(("", "baseline", "pruned"), rows),
                _table(("", ""), summary),
                *(
                    [_table(("latency (median ms)", "device", "batch", "baseline", "pruned", "speed-up"), latency)]
                    if latency
                    else []
                ),
                _table(("layer", "type", "pruned", "weights", "non-zero", "sparsity"), layers),
            ]
        )


@dataclass(frozen=True)
class TensorSummary:
    """An input or output of a model."""

    name: str
    shape: tuple[int, ...]
    """Without the batch axis; -1 where unknown."""
    dtype: str

    @classmethod
    def from_proto(cls, t: pb.TensorSummary) -> TensorSummary:
        return cls(t.name, tuple(t.shape), t.dtype)

    def shape_text(self) -> str:
        """The shape as Keras prints it, with the batch axis: ``(None, 8, 8)``."""
        return "(" + ", ".join(["None", *("?" if d < 0 else str(d) for d in self.shape)]) + ")"


@dataclass(frozen=True)
class LayerSummary:
    """One layer of an uploaded model."""

    name: str
    class_name: str
    params: int
    """Weights of the layer (from the weights file)."""
    prunable: bool
    """TFMOT can prune it (a Dense, Conv, Embedding, recurrent... layer with a kernel)."""
    convertible: bool
    """A Keras 3 layer the service translates to tf_keras (always true for tf_keras models)."""
    left_whole: str = ""
    """Why a layer of a prunable class is left whole ("frozen", "wrapped", "nested", "mixed
    precision" or "activity regularizer"; then ``prunable`` is false); empty otherwise."""

    @classmethod
    def from_proto(cls, layer: pb.LayerSummary) -> LayerSummary:
        return cls(layer.name, layer.class_name, layer.params, layer.prunable, layer.convertible, layer.left_whole)

    def prunable_text(self) -> str:
        """``yes``, ``no``, or ``no (frozen)`` and the like for a layer left whole."""
        return "yes" if self.prunable else f"no ({self.left_whole})" if self.left_whole else "no"


@dataclass(frozen=True)
class ModelSummary:
    """What the service read from an uploaded model without running it (``Artifact.model``).

    Example:
        >>> summary = ModelSummary.from_proto(client.upload_model("model.keras").model)  # doctest: +SKIP
        >>> summary.keras_version, summary.total_params                              # doctest: +SKIP
        (3, 20410)
    """

    keras_version: int
    """2 = tf_keras (Keras 2), 3 = Keras 3."""
    keras_version_string: str
    """As saved in the file ("3.15.1"); empty when the file does not say."""
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    """Shapes known from the configuration alone, else -1."""
    layers: list[LayerSummary]
    total_params: int
    raw: pb.ModelSummary = field(repr=False)

    @classmethod
    def from_proto(cls, m: pb.ModelSummary) -> ModelSummary:
        return cls(
            keras_version=m.keras_version,
            keras_version_string=m.keras_version_string,
            inputs=[TensorSummary.from_proto(t) for t in m.inputs],
            outputs=[TensorSummary.from_proto(t) for t in m.outputs],
            layers=[LayerSummary.from_proto(x) for x in m.layers],
            total_params=m.total_params,
            raw=m,
        )

    @property
    def prunable_params(self) -> int:
        """Weights of the layers TFMOT can prune."""
        return sum(x.params for x in self.layers if x.prunable)

    @property
    def unconvertible(self) -> list[LayerSummary]:
        """Layers the service cannot translate to tf_keras (empty for a model it accepted)."""
        return [x for x in self.layers if not x.convertible]

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (without ``raw``)."""
        return {
            "keras_version": self.keras_version,
            "keras_version_string": self.keras_version_string,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.outputs],
            "layers": [dict(x.__dict__) for x in self.layers],
            "total_params": self.total_params,
        }

    def _repr_html_(self) -> str:
        """Tables for notebooks: the model's tensors, then one row per layer."""
        version = f"{self.keras_version}" + (f" ({self.keras_version_string})" if self.keras_version_string else "")
        tensors = [("input", t.name, t.shape_text(), t.dtype) for t in self.inputs]
        tensors += [("output", t.name, t.shape_text(), t.dtype) for t in self.outputs]
        layers = [
            (x.name, x.class_name, f"{x.params:,}", x.prunable_text(), "yes" if x.convertible else "no")
            for x in self.layers
        ]
        return "\n".join(
            [
                _table(("", ""), [("Keras version", version), ("total params", f"{self.total_params:,}")]),
                _table(("", "name", "shape", "dtype"), tensors),
                _table(("layer", "class", "params", "prunable", "convertible"), layers),
            ]
        )


@dataclass(frozen=True)
class LayerPlan:
    """A layer a job would prune."""

    name: str
    class_name: str
    weights: int
    """Parameters of the layer, kernel and bias (the sparsity split goes by them; the result's
    :attr:`LayerSparsity.weights` counts the kernel alone)."""
    final_sparsity: float
    """The sparsity it should end at."""


@dataclass(frozen=True)
class JobPlan:
    """What a job would do, from :meth:`pruning_client.Client.validate` (nothing is queued).

    Example:
        >>> plan = client.validate(job_spec(model.id, epochs=2))         # doctest: +SKIP
        >>> plan.total_steps, [layer.name for layer in plan.layers]     # doctest: +SKIP
        (844, ['conv2d', 'dense'])
    """

    layers: list[LayerPlan]
    """The layers to prune."""
    train_samples: int
    validation_samples: int
    test_samples: int
    steps_per_epoch: int
    total_steps: int
    schedule_begin_step: int
    schedule_end_step: int
    """The schedule's steps as they will run (end_step 0 resolved to the last step)."""
    keras_version: int
    """Keras version of the uploaded model (2 = tf_keras, 3 = Keras 3)."""
    export_keras_version: int
    """Keras version of the KERAS and H5 exports (the spec's, else the model's)."""
    estimated_seconds: float
    """A rough duration of the job."""
    estimate_basis: str
    """How ``estimated_seconds`` was estimated."""
    warnings: list[str]
    """What the job would warn of as it runs (an output ending in a softmax under a loss from logits)."""
    spec: pb.JobSpec = field(repr=False)
    """The spec with every default made explicit."""
    raw: pb.JobPlan = field(repr=False)

    @classmethod
    def from_proto(cls, p: pb.JobPlan) -> JobPlan:
        return cls(
            layers=[LayerPlan(x.name, x.class_name, x.weights, x.final_sparsity) for x in p.layers],
            train_samples=p.train_samples,
            validation_samples=p.validation_samples,
            test_samples=p.test_samples,
            steps_per_epoch=p.steps_per_epoch,
            total_steps=p.total_steps,
            schedule_begin_step=p.schedule_begin_step,
            schedule_end_step=p.schedule_end_step,
            keras_version=p.keras_version,
            export_keras_version=int(p.spec.export.keras_version) or p.keras_version,
            estimated_seconds=p.estimated_seconds,
            estimate_basis=p.estimate_basis,
            warnings=list(p.warnings),
            spec=p.spec,
            raw=p,
        )

    @property
    def pruned_weights(self) -> int:
        """Parameters (kernel and bias) of the layers to prune."""
        return sum(x.weights for x in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (``spec`` as its JSON mapping; without ``raw``)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("raw", "spec")}
        out["layers"] = [dict(x.__dict__) for x in self.layers]
        spec = json_format.MessageToDict(self.spec, preserving_proto_field_name=True)
        out["spec"] = int64_as_numbers(self.spec.DESCRIPTOR, spec)  # "end_step": 15, not "15"
        return out

    def split_on_worker(self) -> str:
        """What the worker splits the target over the layers by as the job starts ('' when the
        plan's final sparsities are the job's): a sensitivity scan, or the keep-accuracy
        recipe over the layers as channel removal leaves them. The plan then knows the layers,
        not their shares (its final sparsity is the target)."""
        p = self.spec.pruning
        if p.sensitivity_scan:
            return "the scan"
        if p.HasField("structured") and self.spec.training.recipe == pb.RECIPE_KEEP_ACCURACY and not p.layer_sparsity:
            return "channel removal"
        return ""

    def layer_rows(self) -> list[tuple[str, str, str, str]]:
        """(layer, class, params, final sparsity) of each layer to prune, as the CLI and the
        notebook view show them (see :meth:`split_on_worker`)."""
        by = self.split_on_worker()
        share = f"after {by}" if by else ""
        return [(x.name, x.class_name, f"{x.weights:,}", share or f"{x.final_sparsity:.4f}") for x in self.layers]

    def _repr_html_(self) -> str:
        """Tables for notebooks: the figures, then the layers to prune."""
        return "\n".join(
            [
                _table(("", ""), self.summary_lines()),
                _table(("layer", "class", "params", "final sparsity"), self.layer_rows()),
            ]
        )

    def _schedule_line(self) -> str:
        schedule = self.spec.pruning.schedule
        which = schedule.WhichOneof("schedule")
        if which is None:
            return "none (structured pruning only)"
        steps = f"steps {self.schedule_begin_step:,} to {self.schedule_end_step:,}"
        if which == "polynomial_decay":
            s = schedule.polynomial_decay
            line, every = f"polynomial decay {s.initial_sparsity:g} -> {s.final_sparsity:g}, {steps}", s.frequency
        else:
            c = schedule.constant_sparsity
            line, every = f"constant {c.target_sparsity:g}, {steps}", c.frequency
        return line + (f", masks every {plural(every, 'step')}" if every else "")

    def _structured_line(self) -> str:
        s = self.spec.pruning.structured
        criterion = (
            pb.ImportanceCriterion.Name(s.importance or pb.IMPORTANCE_CRITERION_L1)
            .removeprefix("IMPORTANCE_CRITERION_")
            .lower()
        )
        line = f"channel ratio {s.ratio:g}, importance {criterion}"
        if s.round_to > 1:
            line += f", widths rounded to {s.round_to}"
        if s.min_channels > 1:
            line += f", at least {s.min_channels} channels a layer"
        if s.layer_ratios:
            line += ", " + ", ".join(f"{k} {v:g}" for k, v in sorted(s.layer_ratios.items()))
        return line + " (the worker finds the channel groups)"

    def summary_lines(self) -> list[tuple[str, str]]:
        """(label, value) rows of the plan's figures, as the CLI and the notebook view show them."""
        versions = f"{self.keras_version}"
        if self.export_keras_version != self.keras_version:
            versions += f" (exports: {self.export_keras_version})"
        return [
            (
                "samples",
                f"{self.train_samples:,} train, {self.validation_samples:,} validation, {self.test_samples:,} test",
            ),
            ("steps", f"{self.steps_per_epoch:,} per epoch, {self.total_steps:,} in all"),
            ("pruning schedule", self._schedule_line()),
            *([("structured", self._structured_line())] if self.spec.pruning.HasField("structured") else []),
            ("keras version", versions),
            *(
                [("accuracy budget", budget_text(self.spec.budget) + ": a search (see the estimate)")]
                if self.spec.budget.WhichOneof("limit")
                else []
            ),
            ("estimate", f"{self.estimated_seconds:.0f} s ({self.estimate_basis})"),
            *(("warning", w) for w in self.warnings),
        ]


_INT64 = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}


def plain(message: Message) -> dict[str, Any]:
    """``message`` as JSON-ready values, with field names as in the contract, every field
    present (``within_noise: false`` too, not left out as proto3's JSON does with defaults)
    and 64-bit integers as numbers (proto3's JSON writes them as strings)."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return int64_as_numbers(message.DESCRIPTOR, data)


def int64_as_numbers(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    for fd in descriptor.fields:
        if fd.name not in data:
            continue
        value, repeated = data[fd.name], fd.is_repeated
        if fd.cpp_type in _INT64:
            data[fd.name] = [int(v) for v in value] if repeated else int(value)
        elif fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
            if fd.message_type.full_name.startswith("google.protobuf."):
                continue  # Timestamp, Duration: their own JSON forms
            items = value if repeated else [value]
            for item in items:
                int64_as_numbers(fd.message_type, item)
    return data


def recipe_text(r: pb.RecipeResult) -> str:
    """How the job fine-tuned, in one line (the CLI's result and the report say the same):
    the sparsity schedule (none for structured pruning alone), learning rate, distillation,
    early stopping, and the epochs run and kept."""
    if r.schedule_frequency:
        start = f"from step {r.schedule_begin_step}, " if r.schedule_begin_step else ""
        schedule = f"{start}final sparsity at step {r.schedule_end_step} (masks every {r.schedule_frequency})"
    else:
        schedule = "no sparsity schedule (structured pruning only)"
    parts = [
        f"{r.name}, {schedule}",
        f"learning rate {r.learning_rate:g}{' with cosine decay' if r.learning_rate_decay else ''}",
    ]
    if r.distillation:
        parts.append(f"distilled from the baseline (alpha {r.distillation_alpha:g}, T {r.distillation_temperature:g})")
    if r.early_stopping_patience:
        parts.append(f"early stopping with a patience of {plural(r.early_stopping_patience, 'epoch')}")
    return ", ".join(parts) + f"; {plural(r.epochs_run, 'epoch')} run, weights of epoch {r.best_epoch} kept"


def plural(n: int, noun: str) -> str:
    """``n`` and ``noun``, with an "s" unless ``n`` is 1: "1 epoch", "2 epochs"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def figure(value: float | None) -> str:
    """An accuracy (or a loss) to four places, or "n/a" where there is none (a regression
    loss has no accuracy; a skipped baseline neither)."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"  # a diverged loss: 2.924e+13


def points(delta: float | None) -> str:
    """An accuracy difference in percentage points, or "n/a"."""
    if delta is None:
        return "n/a"
    return f"{round(delta * 100, 2) + 0.0:+.2f} pp"  # + 0.0: a loss that rounds to nothing is +0.00, not -0.00


def speed_up(latency: pb.Latency) -> str:
    """Baseline over pruned time, "1.32x"; "1.47x, within noise" when the two models' timed
    runs overlap in their middle halves (the figure is then no speed-up to count on)."""
    if not latency.after_ms:
        return ""
    ratio = f"{latency.before_ms / latency.after_ms:.2f}x"
    return f"{ratio}, within noise" if latency.within_noise else ratio


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def row(cells: Sequence[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    return (
        f"<table>\n<thead>{row(header, 'th')}</thead>\n<tbody>\n"
        + "\n".join(row(r, "td") for r in rows)
        + "\n</tbody>\n</table>"
    )
