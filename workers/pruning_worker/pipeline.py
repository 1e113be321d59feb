"""The pruning pipeline: load (a Keras 3 model translated to tf_keras) -> check -> baseline ->
prune_low_magnitude -> fine-tune -> evaluate -> strip_pruning -> export (back in the Keras
version asked for) -> measure (on the exported file). Each step lives in its own module;
this one only runs them in order. Plain TensorFlow code with no Celery import.
"""

from __future__ import annotations

import pathlib

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_core import formats
from pruning_core.phases import Phase

from . import measure, recipe, safe_load
from .callbacks import ProgressCallback, Reporter
from .errors import Cancelled
from .evaluate import evaluate
from .export import KERAS_FILES, as_keras3, export, load_export
from .inputs import Inputs, by_output, check, head, length
from .measure import device_name
from .train import fine_tune

__all__ = ["Inputs", "device_name", "run"]

for _gpu in tf.config.list_physical_devices("GPU"):
    tf.config.experimental.set_memory_growth(_gpu, True)

FAR_FROM_TARGET = 0.1


def run(
    spec: pb.JobSpec, inputs: Inputs, reporter: Reporter, workdir: pathlib.Path
) -> tuple[pb.PruneResult, list[tuple[pathlib.Path, str]]]:
    """Runs the whole pipeline; returns (PruneResult without artifacts, [(file, format name)])."""
    t = spec.training
    reporter.phase(Phase.LOAD, "loading the model")
    loaded = safe_load.load(inputs.model_path, workdir, inputs.max_decompressed)
    model = loaded.model
    version_out = spec.export.keras_version or loaded.keras_version
    if loaded.keras_version == 3:
        reporter.log(
            f"Keras 3 model translated to tf_keras for pruning; outputs agree within "
            f"{loaded.conversion_diff:.2g} on a probe batch"
        )
    check(model, inputs.data, t.loss)
    x_train, y_train, x_test, y_test = inputs.data
    y_train, y_test = by_output(model, y_train), by_output(model, y_test)
    if t.max_train_samples:
        x_train, y_train = head(x_train, t.max_train_samples), head(y_train, t.max_train_samples)
    if t.seed:
        keras.utils.set_random_seed(t.seed)
    loss = recipe.make_loss(t.loss)

    result = pb.PruneResult(
        device=device_name(),
        keras_version_in=loaded.keras_version,
        keras_version_out=version_out,
        conversion_max_abs_diff=loaded.conversion_diff,
    )
    if not t.skip_baseline:
        reporter.phase(Phase.BASELINE, f"evaluating the baseline on {length(x_test)} test samples")
        model.compile(optimizer=recipe.make_optimizer(t), loss=loss, metrics=["accuracy"])
        result.baseline.CopyFrom(evaluate(model, x_test, y_test, t, "baseline evaluation"))

    # Measured now: pruning wraps these very layers and masks their kernels in place.
    main_format = spec.export.formats[0]
    baseline3 = None
    if version_out == 3 and main_format in KERAS_FILES:
        baseline3 = loaded.original if loaded.original is not None else as_keras3(model, None, workdir)
    baseline_file = export(model, main_format, workdir / "baseline", x_train, baseline3)
    result.size_before.CopyFrom(measure.sizes(baseline_file))

    steps = recipe.train_steps(length(x_train), t)
    schedule = recipe.make_schedule(spec.pruning, steps * t.epochs)
    pruned, chosen = recipe.apply_pruning(model, spec.pruning, schedule)
    reporter.log(f"pruning {len(chosen)} layers: {', '.join(chosen)}")
    pruned.compile(optimizer=recipe.make_optimizer(t), loss=loss, metrics=["accuracy"])

    reporter.phase(Phase.FINE_TUNE, f"fine-tuning {t.epochs} epochs x {steps} steps on {result.device}")
    progress = ProgressCallback(reporter, schedule, t.epochs, steps)
    result.fine_tune_seconds = fine_tune(pruned, x_train, y_train, t, [progress])
    if progress.cancelled or reporter.should_stop():
        raise Cancelled()

    reporter.phase(Phase.EVALUATE, "evaluating the pruned model")
    result.pruned.CopyFrom(evaluate(pruned, x_test, y_test, t, "evaluation of the pruned model"))
    if not t.skip_baseline:
        result.accuracy_delta = result.pruned.accuracy - result.baseline.accuracy

    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    stripped3 = None
    if version_out == 3 and any(fmt in KERAS_FILES for fmt in spec.export.formats):
        from . import bridge

        stripped3 = as_keras3(stripped, loaded.original, workdir)
        result.export_conversion_max_abs_diff = bridge.check_equivalence(stripped3, stripped)

    reporter.phase(Phase.EXPORT, "exporting")
    outputs = [
        (export(stripped, fmt, workdir / f"pruned_{i}", x_train, stripped3), formats.export(fmt).name)
        for i, fmt in enumerate(spec.export.formats)
    ]
    # Sparsity as the user will find it: measured on the downloaded file where it is a Keras model.
    measured = load_export(outputs[0][0], version_out) if main_format in KERAS_FILES else stripped
    measure.fill_sparsity(result, measured, set(chosen))
    target = recipe.target_sparsity(spec.pruning)
    for layer in result.layers:
        if layer.pruned and abs(layer.sparsity - target) > FAR_FROM_TARGET:
            reporter.log(
                f"layer {layer.name} ended at sparsity {layer.sparsity:.2f}, far from the target "
                f"{target:.2f} (its shape may not suit the block or m-by-n pattern)",
                level="WARNING",
            )

    result.size_after.CopyFrom(measure.sizes(outputs[0][0]))
    result.compression_ratio = result.size_before.gzip_bytes / max(1, result.size_after.gzip_bytes)
    reporter.log(
        f"pruned accuracy {result.pruned.accuracy:.4f}, kernel sparsity {result.pruned_kernel_sparsity:.3f}, "
        f"gzip {result.size_before.gzip_bytes} -> {result.size_after.gzip_bytes} bytes"
    )
    return result, outputs
