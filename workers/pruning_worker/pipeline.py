"""The pruning pipeline: load -> check -> baseline -> prune_low_magnitude -> fine-tune ->
evaluate -> strip_pruning -> export -> measure. Each step lives in its own module; this one
only runs them in order. Plain TensorFlow code with no Celery import.
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
from .export import export
from .inputs import Inputs, check
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
    model = safe_load.load_model(inputs.model_path, workdir, inputs.max_decompressed)
    check(model, inputs.data, t.loss)
    x_train, y_train, x_test, y_test = inputs.data
    if t.max_train_samples:
        x_train, y_train = x_train[: t.max_train_samples], y_train[: t.max_train_samples]
    if t.seed:
        keras.utils.set_random_seed(t.seed)
    loss = recipe.make_loss(t.loss)

    result = pb.PruneResult(device=device_name())
    if not t.skip_baseline:
        reporter.phase(Phase.BASELINE, f"evaluating the baseline on {len(x_test)} test samples")
        model.compile(optimizer=recipe.make_optimizer(t), loss=loss, metrics=["accuracy"])
        result.baseline.CopyFrom(evaluate(model, x_test, y_test, t, "baseline evaluation"))

    # Measured now: pruning wraps these very layers and masks their kernels in place.
    main_format = spec.export.formats[0]
    result.size_before.CopyFrom(measure.sizes(export(model, main_format, workdir / "baseline", x_train)))

    steps = recipe.train_steps(len(x_train), t)
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
    measure.fill_sparsity(result, stripped, set(chosen))
    target = recipe.target_sparsity(spec.pruning)
    for layer in result.layers:
        if layer.pruned and abs(layer.sparsity - target) > FAR_FROM_TARGET:
            reporter.log(f"layer {layer.name} ended at sparsity {layer.sparsity:.2f}, far from the target "
                         f"{target:.2f} (its shape may not suit the block or m-by-n pattern)", level="WARNING")

    reporter.phase(Phase.EXPORT, "exporting")
    outputs = [
        (export(stripped, fmt, workdir / f"pruned_{i}", x_train), formats.export(fmt).name)
        for i, fmt in enumerate(spec.export.formats)
    ]
    result.size_after.CopyFrom(measure.sizes(outputs[0][0]))
    result.compression_ratio = result.size_before.gzip_bytes / max(1, result.size_after.gzip_bytes)
    reporter.log(
        f"pruned accuracy {result.pruned.accuracy:.4f}, kernel sparsity {result.pruned_kernel_sparsity:.3f}, "
        f"gzip {result.size_before.gzip_bytes} -> {result.size_after.gzip_bytes} bytes"
    )
    return result, outputs
