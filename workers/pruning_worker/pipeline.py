"""The pruning pipeline: load -> baseline -> prune_low_magnitude -> fine-tune -> evaluate ->
strip_pruning -> export -> metrics. Plain TensorFlow code with no Celery import.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot needs Keras 2 (tf_keras)

import math  # noqa: E402
import re  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry  # noqa: E402

from pruning.v1 import pruning_pb2 as pb  # noqa: E402
from pruning_core import modelcheck, validation  # noqa: E402
from pruning_core.blobs import BlobStore  # noqa: E402

from . import datasets, metrics, safe_load  # noqa: E402
from .errors import Cancelled, JobInputError  # noqa: E402

for _gpu in tf.config.list_physical_devices("GPU"):
    tf.config.experimental.set_memory_growth(_gpu, True)

EXTENSIONS = {
    pb.EXPORT_FORMAT_KERAS: ("keras", ".keras"),
    pb.EXPORT_FORMAT_H5: ("h5", ".h5"),
    pb.EXPORT_FORMAT_SAVED_MODEL: ("saved_model.zip", ".zip"),
    pb.EXPORT_FORMAT_TFLITE: ("tflite", ".tflite"),
    pb.EXPORT_FORMAT_TFLITE_INT8: ("tflite_int8", ".int8.tflite"),
}


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU:0 ({details.get('device_name', 'GPU')})"


@dataclass
class Inputs:
    model_path: pathlib.Path
    data: tuple[np.ndarray, ...]
    max_decompressed: int

    @classmethod
    def resolve(cls, spec: pb.JobSpec, tenant: str, store, settings) -> "Inputs":
        blobs = BlobStore(settings.artifacts_path)
        try:
            store.get_artifact(tenant, spec.model_id)
        except KeyError:
            raise JobInputError(f"model: no artifact {spec.model_id}") from None
        if spec.dataset.WhichOneof("source") == "artifact_id":
            data = datasets.load_npz(blobs.path(spec.dataset.artifact_id))
        else:
            data = datasets.load_builtin(spec.dataset.builtin, settings.data_path)
        return cls(blobs.path(spec.model_id), data, settings.max_decompressed_bytes)


# -- spec -> tfmot ---------------------------------------------------------------------------


def train_steps(n_samples: int, t: pb.TrainingSpec) -> int:
    """Optimizer steps per epoch, as Keras splits off the validation data."""
    kept = int(math.floor(n_samples * (1.0 - t.validation_split)))
    return max(1, math.ceil(kept / t.batch_size))


def make_schedule(p: pb.PruningSpec, last_step: int):
    which = p.schedule.WhichOneof("schedule")
    s = getattr(p.schedule, which)
    end = s.end_step or last_step
    if end <= s.begin_step:
        raise JobInputError(f"spec.pruning.schedule: end step {end} is not after begin step {s.begin_step}")
    if which == "constant_sparsity":
        return tfmot.sparsity.keras.ConstantSparsity(s.target_sparsity, s.begin_step, end, s.frequency)
    return tfmot.sparsity.keras.PolynomialDecay(
        s.initial_sparsity, s.final_sparsity, s.begin_step, end, s.power, s.frequency
    )


def target_sparsity(p: pb.PruningSpec) -> float:
    """The sparsity the spec aims at by the end of fine-tuning."""
    if p.HasField("sparsity_m_by_n"):
        return 1.0 - p.sparsity_m_by_n.m / p.sparsity_m_by_n.n
    s = p.schedule
    return s.constant_sparsity.target_sparsity if s.HasField("constant_sparsity") else s.polynomial_decay.final_sparsity


def scheduled_sparsity(schedule, step: int) -> float:
    """The target sparsity the schedule sets at ``step``."""
    config = schedule.get_config()["config"]
    if step < config["begin_step"]:
        return 0.0
    if isinstance(schedule, tfmot.sparsity.keras.ConstantSparsity):
        return float(config["target_sparsity"])
    span = config["end_step"] - config["begin_step"]
    done = min(1.0, (step - config["begin_step"]) / span)
    initial, final = config["initial_sparsity"], config["final_sparsity"]
    return float(final + (initial - final) * (1.0 - done) ** config["power"])


def _prunable(layer) -> bool:
    return bool(layer.trainable_weights) and (
        isinstance(layer, tfmot.sparsity.keras.PrunableLayer) or prune_registry.PruneRegistry.supports(layer)
    )


def apply_pruning(model: keras.Model, p: pb.PruningSpec, schedule) -> tuple[keras.Model, list[str]]:
    """Wraps the selected prunable layers; returns the model and the wrapped layer names."""
    params = {
        "pruning_schedule": schedule,
        "block_size": tuple(p.block_size),
        "block_pooling_type": "MAX" if p.block_pooling_type == pb.BLOCK_POOLING_TYPE_MAX else "AVG",
    }
    if p.HasField("sparsity_m_by_n"):
        params["sparsity_m_by_n"] = (p.sparsity_m_by_n.m, p.sparsity_m_by_n.n)
    # The server checks this at CreateJob when it knows the layers; exports carry no layer list.
    spec_only = pb.JobSpec(pruning=p)
    violations = validation.validate_against_model(spec_only, [(type(l).__name__, l.name) for l in model.layers])
    if violations:
        raise JobInputError("; ".join(f"{field}: {text}" for field, text in violations))
    chosen = [layer.name for layer in model.layers if validation.selected(type(layer).__name__, layer.name, p.layers) and _prunable(layer)]
    if not chosen:
        raise JobInputError("spec.pruning.layers: selects no prunable layer (Dense, Conv, ...)")
    if p.policy == pb.PRUNING_POLICY_PRUNE_FOR_LATENCY_ON_XNNPACK:
        params["pruning_policy"] = tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
        try:
            return tfmot.sparsity.keras.prune_low_magnitude(model, **params), chosen
        except (ValueError, TypeError) as exc:
            raise JobInputError(f"spec.pruning.policy: {exc}") from None

    def clone(layer):
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


def make_loss(name: str):
    base = name.removesuffix("_from_logits")
    if base in _LOSSES:
        return _LOSSES[base](from_logits=name.endswith("_from_logits"))
    return keras.losses.get(name)


def make_optimizer(t: pb.TrainingSpec):
    config = {"learning_rate": t.learning_rate} if t.learning_rate else {}
    return keras.optimizers.get({"class_name": t.optimizer, "config": config})


# -- progress --------------------------------------------------------------------------------


class ProgressCallback(keras.callbacks.Callback):
    """Sends throttled progress events and stops training promptly on cancel."""

    def __init__(self, reporter, schedule, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.reporter, self.schedule = reporter, schedule
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.total = epochs * steps_per_epoch
        self.epoch = 0
        self.cancelled = False

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _send(self, step: int, logs, force: bool):
        elapsed = time.monotonic() - self.started
        eta = elapsed / step * (self.total - step) if step else 0.0
        self.reporter.progress(
            pb.Progress(
                phase="fine_tune",
                epoch=self.epoch + 1,
                total_epochs=self.epochs,
                step=step,
                total_steps=self.total,
                loss=float((logs or {}).get("loss", 0.0)),
                accuracy=float((logs or {}).get("accuracy", 0.0)),
                sparsity=scheduled_sparsity(self.schedule, step),
                eta_seconds=eta,
            ),
            force=force,
        )

    def on_train_batch_end(self, batch, logs=None):
        self._send(self.epoch * self.steps_per_epoch + batch + 1, logs, force=False)
        if self.reporter.should_stop():
            self.cancelled = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.steps_per_epoch
        self._send(step, logs, force=True)
        figures = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()))
        self.reporter.log(f"epoch {epoch + 1}/{self.epochs}: {figures}, target sparsity "
                          f"{scheduled_sparsity(self.schedule, step):.3f}")


# -- the pipeline ----------------------------------------------------------------------------


def _check_data(model: keras.Model, data) -> None:
    x_train, y_train, x_test, y_test = data
    expected = list(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if not modelcheck.shapes_fit(expected, list(x.shape[1:])):
            raise JobInputError(f"dataset: {name} samples have shape {list(x.shape[1:])}, the model expects {expected}")
    if len(x_train) == 0 or len(x_test) == 0:
        raise JobInputError("dataset: x_train and x_test must not be empty")


def _root_cause(exc: Exception) -> str:
    """The line of a TensorFlow error that names the cause (its traces run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z]+(Error|Exception): ", line)]
    if causes:
        return causes[-1][:500]
    noise = ("File ", "[[", "Detected at node", "Graph execution error", "Call arguments", "•", "in user code")
    rest = [line for line in lines if not line.startswith(noise)]
    return (rest[-1] if rest else type(exc).__name__)[:500]


def _evaluate(model, x, y, t: pb.TrainingSpec) -> pb.Metrics:
    loss, accuracy = model.evaluate(x, y, batch_size=t.batch_size, verbose=0)
    return pb.Metrics(loss=float(loss), accuracy=float(accuracy))


def export(model: keras.Model, fmt: int, path_base: pathlib.Path, x_sample: np.ndarray) -> pathlib.Path:
    """Writes ``model`` in one export format; returns the file."""
    path = path_base.with_suffix(EXTENSIONS[fmt][1])
    if fmt == pb.EXPORT_FORMAT_KERAS:
        model.save(path)
    elif fmt == pb.EXPORT_FORMAT_H5:
        keras.models.save_model(model, path, include_optimizer=False, save_format="h5")
    elif fmt == pb.EXPORT_FORMAT_SAVED_MODEL:
        directory = path_base.parent / f"{path_base.name}_saved_model"
        tf.saved_model.save(model, str(directory))
        path = pathlib.Path(shutil.make_archive(str(path_base) + "_saved_model", "zip", directory))
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if fmt == pb.EXPORT_FORMAT_TFLITE_INT8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            sample = x_sample[:200].astype("float32")
            converter.representative_dataset = lambda: ([row[None, ...]] for row in sample)
        path.write_bytes(converter.convert())
    return path


def run(spec: pb.JobSpec, inputs: Inputs, reporter, workdir: pathlib.Path):
    """Runs the whole pipeline; returns (PruneResult without artifacts, [(file, format)])."""
    t = spec.training
    reporter.phase("load", "loading the model")
    model = safe_load.load_model(inputs.model_path, workdir, inputs.max_decompressed)
    _check_data(model, inputs.data)
    x_train, y_train, x_test, y_test = inputs.data
    if t.max_train_samples:
        x_train, y_train = x_train[: t.max_train_samples], y_train[: t.max_train_samples]
    if t.seed:
        keras.utils.set_random_seed(t.seed)
    loss = make_loss(t.loss)

    result = pb.PruneResult(device=device_name())
    if not t.skip_baseline:
        reporter.phase("baseline", f"evaluating the baseline on {len(x_test)} test samples")
        model.compile(optimizer=make_optimizer(t), loss=loss, metrics=["accuracy"])
        result.baseline.CopyFrom(_evaluate(model, x_test, y_test, t))

    # Measured now: pruning wraps these very layers and masks their kernels in place.
    main_format = spec.export.formats[0]
    result.size_before.CopyFrom(metrics.sizes(export(model, main_format, workdir / "baseline", x_train)))

    steps = train_steps(len(x_train), t)
    schedule = make_schedule(spec.pruning, steps * t.epochs)
    pruned, chosen = apply_pruning(model, spec.pruning, schedule)
    reporter.log(f"pruning {len(chosen)} layers: {', '.join(chosen)}")
    pruned.compile(optimizer=make_optimizer(t), loss=loss, metrics=["accuracy"])

    reporter.phase("fine_tune", f"fine-tuning {t.epochs} epochs x {steps} steps on {result.device}")
    progress = ProgressCallback(reporter, schedule, t.epochs, steps)
    started = time.monotonic()
    try:
        pruned.fit(
            x_train, y_train,
            batch_size=t.batch_size,
            epochs=t.epochs,
            validation_split=t.validation_split,
            callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), progress],
            verbose=0,
        )
    except (ValueError, tf.errors.InvalidArgumentError) as exc:
        raise JobInputError(f"training failed on this model, data and spec: {_root_cause(exc)}") from None
    result.fine_tune_seconds = time.monotonic() - started
    if progress.cancelled or reporter.should_stop():
        raise Cancelled()

    reporter.phase("evaluate", "evaluating the pruned model")
    result.pruned.CopyFrom(_evaluate(pruned, x_test, y_test, t))
    if not t.skip_baseline:
        result.accuracy_delta = result.pruned.accuracy - result.baseline.accuracy

    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    metrics.fill_sparsity(result, stripped, set(chosen))
    target = target_sparsity(spec.pruning)
    for layer in result.layers:
        if layer.pruned and abs(layer.sparsity - target) > 0.1:
            reporter.log(f"layer {layer.name} ended at sparsity {layer.sparsity:.2f}, far from the target "
                         f"{target:.2f} (its shape may not suit the block or m-by-n pattern)", level="WARNING")

    reporter.phase("export", "exporting")
    outputs = []
    for i, fmt in enumerate(spec.export.formats):
        path = export(stripped, fmt, workdir / f"pruned_{i}", x_train)
        outputs.append((path, EXTENSIONS[fmt][0]))
    result.size_after.CopyFrom(metrics.sizes(outputs[0][0]))
    result.compression_ratio = result.size_before.gzip_bytes / max(1, result.size_after.gzip_bytes)
    reporter.log(
        f"pruned accuracy {result.pruned.accuracy:.4f}, kernel sparsity {result.pruned_kernel_sparsity:.3f}, "
        f"gzip {result.size_before.gzip_bytes} -> {result.size_after.gzip_bytes} bytes"
    )
    return result, outputs
