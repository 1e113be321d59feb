"""The pruning pipeline: load (a Keras 3 model translated to tf_keras) -> check -> baseline ->
structured pruning (channels removed, when asked) -> prune_low_magnitude (when a schedule is
given) -> fine-tune -> evaluate -> strip_pruning -> export (back in the Keras
version asked for) -> measure (on the exported file). Each step lives in its own module;
this one only runs them in order. Plain TensorFlow code with no Celery import.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from pruning.v1 import pruning_pb2 as pb
from pruning_core import defaults, formats, plan, validation
from pruning_core import recipe as core_recipe
from pruning_core.phases import Phase

from . import distill, measure, recipe, report, safe_load, sensitivity, tferrors
from .callbacks import HistoryCallback, ProgressCallback, Reporter, early_stopping
from .errors import Cancelled, JobInputError, OutcomeError
from .evaluate import evaluate
from .export import KERAS_FILES, check_tflite, export, keras3_twin, load_export
from .inputs import Inputs, as_tensors, by_output, check, check_split, head, length, output_activations, output_units
from .losses import JobLoss
from .measure import device_name
from .structured import step
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
    if t.seed:  # before the model is built: its random layers (augmentation, dropout) draw their seeds then
        keras.utils.set_random_seed(t.seed)
    reporter.phase(Phase.LOAD, "loading the model")
    with tferrors.step("loading the model"):  # an op the worker's device cannot run, say
        loaded = safe_load.load(inputs.model_path, workdir, inputs.max_decompressed, inputs.data[0])
    model = loaded.model
    version_out = spec.export.keras_version or loaded.keras_version
    if loaded.keras_version == 3:
        reporter.log(
            f"Keras 3 model translated to tf_keras for pruning; outputs agree within "
            f"{loaded.conversion_diff:.2g} on a probe batch"
        )
    check(model, inputs.data, t)
    x_train, y_train, x_test, y_test = inputs.data
    y_train, y_test = by_output(model, y_train), by_output(model, y_test)
    if t.max_train_samples:
        x_train, y_train = head(x_train, t.max_train_samples), head(y_train, t.max_train_samples)
    check_split(length(x_train), t.validation_split)
    # What Keras trains, predicts and evaluates on, converted once (the arrays stay for the rest)
    fit_x, test_x = as_tensors(x_train), as_tensors(x_test)
    job_loss = JobLoss.of(model, t)  # one loss, or one per output
    loss = job_loss.keras_loss()
    units = output_units(model)
    for output, activation in output_activations(model).items():
        loss_name = validation.output_loss(t, output) or defaults.LOSS
        if warning := validation.logits_warning(output, activation, loss_name, units.get(output)):
            reporter.log(warning, level="WARNING")

    result = pb.PruneResult(
        device=device_name(),
        keras_version_in=loaded.keras_version,
        keras_version_out=version_out,
        conversion_max_abs_diff=loaded.conversion_diff,
    )
    result.phase_seconds["inputs"] = inputs.seconds
    reporter.measured(result)  # a job failing from here on keeps what was measured

    # Measured now: pruning wraps these very layers and masks their kernels in place. Saved
    # before the baseline's compile and evaluation, as loaded (uncompiled): the pruned model is
    # saved without compile, optimizer or metric state too, so the two sizes compare like for like.
    main_format = spec.export.formats[0]
    keras3_files = version_out == 3 and any(fmt in KERAS_FILES for fmt in spec.export.formats)
    baseline3 = loaded.original
    if keras3_files and baseline3 is None:
        # before training: a model Keras 3 reads wrong fails now
        baseline3, _ = keras3_twin(model, None, workdir, x=x_train)
    keras3_main = keras3_files and main_format in KERAS_FILES
    baseline_file = export(model, main_format, workdir / "baseline", x_train, baseline3 if keras3_main else None)
    result.size_before.CopyFrom(measure.sizes(baseline_file))
    check_tflite(model, spec.export.formats)  # before any training: pruning changes no TFLite op

    if not t.skip_baseline:
        reporter.phase(Phase.BASELINE, f"evaluating the baseline on {length(x_test)} test samples")
        model.compile(optimizer=recipe.make_optimizer(t), loss=loss, metrics=job_loss.keras_metrics())
        result.baseline.CopyFrom(evaluate(model, test_x, y_test, t, "baseline evaluation"))

    original = model
    taught: distill.Distillation | None = None
    if t.distillation:  # the teacher's outputs now, before pruning changes a weight
        prepared = distill.prepare(
            model,
            fit_x,
            y_train,
            job_loss.single or "set per output",
            t.distillation_alpha,
            t.distillation_temperature,
            t.batch_size,
        )
        if isinstance(prepared, str):
            reporter.log(f"fine-tuning without distillation: {prepared}", level="WARNING")
        else:
            taught = prepared
            reporter.log(
                f"distilling from the model as uploaded: alpha {t.distillation_alpha:g}, "
                f"temperature {t.distillation_temperature:g}"
            )
    if spec.pruning.HasField("structured"):
        reporter.phase(Phase.STRUCTURE, "removing channels by dependency group")
        model, structured = step.run(model, spec.pruning, head(x_train, 512), head(y_train, 512), job_loss.function())
        result.structured.CopyFrom(structured)
        reporter.log(
            f"structured: {structured.groups_pruned} of {structured.groups} channel groups cut, parameters "
            f"{structured.params_before} -> {structured.params_after}, FLOPs {structured.flops_before} -> "
            f"{structured.flops_after}; left whole: "
            + (", ".join(f"{x.name} ({x.reason})" for x in structured.left_whole) or "none")
        )
        if not structured.groups_pruned:  # why, from each layer's own reason
            why = "; ".join(f"{x.name}: {x.reason}" for x in structured.left_whole[:6]) or "no layer can shrink"
            more = f" (and {len(structured.left_whole) - 6} more)" if len(structured.left_whole) > 6 else ""
            if not spec.pruning.HasField("schedule"):  # nothing else to do: fail now, not after fine-tuning
                raise JobInputError(
                    f"spec.pruning.structured: structured pruning can remove no channel of this model ({why}{more}), "
                    "and the job prunes nothing else: change the ratios, round_to or min_channels, or add a schedule"
                )
            reporter.log(f"structured pruning removed no channel: {why}{more}", level="WARNING")
        _split_after_surgery(model, spec, reporter)

    steps = recipe.train_steps(length(x_train), t)
    schedule = None
    chosen: list[str] = []
    pruned = model
    if spec.pruning.HasField("schedule") and spec.pruning.sensitivity_scan:
        _scan(model, spec.pruning, x_train, y_train, job_loss.function(), reporter)
    uploaded = measure.kernel_sparsities(model)  # before the masks change the kernels in place
    if spec.pruning.HasField("schedule"):
        schedule = recipe.make_schedule(spec.pruning, steps * t.epochs)
        pruned, chosen = recipe.apply_pruning(model, spec.pruning, schedule)
        reporter.log(f"pruning {len(chosen)} layers: {', '.join(chosen)}")
        for note in recipe.check_shapes(model, spec.pruning, chosen):
            reporter.log(note, "WARNING")
    pruned.compile(
        optimizer=recipe.make_optimizer(t, steps * t.epochs),
        loss=taught.loss if taught else loss,
        metrics=taught.metrics() if taught else job_loss.keras_metrics(),
    )

    reporter.phase(
        Phase.FINE_TUNE,
        f"fine-tuning {t.epochs} epoch{'s' if t.epochs != 1 else ''} x {steps} steps on {result.device}",
    )
    progress = ProgressCallback(reporter, schedule, t.epochs, steps)
    history = HistoryCallback(schedule, steps)
    final_step = recipe.final_step(spec.pruning)
    callbacks = [progress, history]
    reporting = spec.report.enabled or not spec.report.HasField("enabled")
    log_dir = workdir / "tensorboard"
    if reporting:
        callbacks += report.tensorboard_callbacks(log_dir, pruned=bool(chosen))
    stopper = None
    if t.early_stopping_patience and t.validation_split > 0:
        on_accuracy = job_loss.has_accuracy and len(job_loss.names) == 1
        stopper = early_stopping(t.early_stopping_patience, final_step, steps, on_accuracy)
        callbacks.append(stopper)
    try:
        result.fine_tune_seconds = fine_tune(pruned, fit_x, taught.targets if taught else y_train, t, callbacks)
    finally:  # a job failing in training (its time limit) keeps the epochs it ran
        result.history.extend(history.history)
    if taught:  # evaluated on the task's own loss, like the baseline
        pruned.compile(optimizer=pruned.optimizer, loss=loss, metrics=job_loss.keras_metrics())
    if progress.cancelled or reporter.should_stop():
        reporter.check_between_steps()  # Cancelled, or WorkerStopping when the worker shuts down
        raise Cancelled()
    if history.diverged:
        raise OutcomeError(
            f"fine-tuning diverged: {history.diverged}; lower spec.training.learning_rate or check the data"
        )
    result.recipe.CopyFrom(recipe.describe(spec, history.history, stopper, distilled=taught is not None))
    reporter.log(
        f"recipe {result.recipe.name}: {result.recipe.epochs_run} epoch{'s' * (result.recipe.epochs_run != 1)} run, "
        "weights of epoch "
        f"{result.recipe.best_epoch} kept"
    )

    reporter.phase(Phase.EVALUATE, "evaluating the pruned model")
    result.pruned.CopyFrom(evaluate(pruned, test_x, y_test, t, "evaluation of the pruned model"))
    if not (math.isfinite(result.pruned.loss) and math.isfinite(result.pruned.accuracy)):
        also = f" and accuracy {result.pruned.accuracy}" if result.pruned.HasField("accuracy") else ""
        raise OutcomeError(
            f"the pruned model's test loss is {result.pruned.loss}{also}: it is broken, so it is not handed back"
        )
    if result.pruned.HasField("accuracy") and result.baseline.HasField("accuracy"):
        result.accuracy_delta = result.pruned.accuracy - result.baseline.accuracy
        binary = (job_loss.single or "").startswith("binary_crossentropy")  # the accuracy evaluate.metrics gives
        if chance := recipe.chance_level_note(result.pruned.accuracy, result.baseline.accuracy, y_test, binary):
            reporter.log(chance, level="WARNING")

    stripped = tfmot.sparsity.keras.strip_pruning(pruned) if chosen else pruned
    stripped3 = None
    if keras3_files:
        # A model with channels removed no longer fits a clone of the uploaded Keras 3 model:
        # Keras 3 reads it from the tf_keras file instead.
        like = None if spec.pruning.HasField("structured") else loaded.original
        field = "spec.pruning.structured" if like is None and loaded.keras_version == 3 else "spec.export.keras_version"
        stripped3, result.export_conversion_max_abs_diff = keras3_twin(stripped, like, workdir, field, x_train)

    reporter.phase(Phase.EXPORT, "exporting")
    outputs = []
    for i, fmt in enumerate(spec.export.formats):
        reporter.check_between_steps()  # the time limit holds through the exports and the report too
        outputs.append((export(stripped, fmt, workdir / f"pruned_{i}", x_train, stripped3), formats.export(fmt).name))
    # Every Keras file loads back as its user will load it (Keras 3 wrote .h5 files its own
    # loader refuses); sparsity as the user will find it: measured on the first such file.
    reloaded = [
        load_export(path, version_out, name)
        for (path, name), fmt in zip(outputs, spec.export.formats)
        if fmt in KERAS_FILES
    ]
    measured = reloaded[0] if main_format in KERAS_FILES else stripped
    measure.fill_sparsity(result, measured, set(chosen), recipe.layer_targets(spec.pruning, chosen, measured))
    if chosen and (kept := recipe.check_target(result, spec.pruning, uploaded)):
        reporter.log(kept, level="WARNING")
    for layer in result.layers:
        # sparser than asked with zeros of its own, kept: check_target's note tells of it
        already = layer.target_sparsity < layer.sparsity <= uploaded.get(layer.name, 0.0) + FAR_FROM_TARGET
        if layer.pruned and abs(layer.sparsity - layer.target_sparsity) > FAR_FROM_TARGET and not already:
            reporter.log(
                f"layer {layer.name} ended at sparsity {layer.sparsity:.2f}, far from the target "
                f"{layer.target_sparsity:.2f} (its shape may not suit the block or m-by-n pattern)",
                level="WARNING",
            )

    for path, name in outputs:
        if name in ("tflite", "tflite_int8") and job_loss.has_accuracy:
            reporter.check_between_steps()
            try:
                measured_tflite = measure.tflite_accuracy(path, x_test, y_test)
            except Exception as exc:  # noqa: BLE001 - a figure the job can go without, like latency
                reporter.log(f"{name} export: no test accuracy ({tferrors.root_cause(exc)})", level="WARNING")
                continue
            if measured_tflite is not None:
                accuracy, samples = measured_tflite
                result.export_accuracy.add(format=name, accuracy=accuracy, samples=samples)
                reporter.log(f"{name} export: test accuracy {accuracy:.4f} on {samples} samples (TFLite interpreter)")
    result.size_after.CopyFrom(measure.sizes(outputs[0][0]))
    if spec.pruning.HasField("structured"):
        reporter.phase(Phase.LATENCY, "measuring latency before and after")
        repeats = spec.pruning.structured.latency_repeats or defaults.LATENCY_REPEATS
        result.structured.latency.extend(
            measure.latency_figures(
                original,
                stripped,
                result.device,
                step.BATCHES,
                repeats,
                lambda m: reporter.log(m, level="WARNING"),
                x_test,  # open dimensions (a sequence length, an image size) take the data's
                reporter.check_between_steps,
            )
        )
    result.compression_ratio = result.size_before.gzip_bytes / max(1, result.size_after.gzip_bytes)
    if reporting:
        reporter.check_between_steps()
        batch = plan.train_batch(length(x_train), t)  # what a step took, not more than the data holds
        outputs += _report(spec, result, original, stripped, workdir, log_dir, reporter, x_test, batch)
    reporter.check_between_steps()
    result.phase_seconds.update(reporter.timings())
    quality = (
        f"pruned accuracy {result.pruned.accuracy:.4f}"
        if result.pruned.HasField("accuracy")
        else f"pruned test loss {result.pruned.loss:.4f}"
    )
    reporter.log(
        f"{quality}, kernel sparsity {result.pruned_kernel_sparsity:.3f}, "
        f"gzip {result.size_before.gzip_bytes} -> {result.size_after.gzip_bytes} bytes"
    )
    return result, outputs


def _split_after_surgery(model: Any, spec: pb.JobSpec, reporter: Reporter) -> None:
    """The keep-accuracy recipe's per-layer sparsity (``pruning_core.recipe.allocate``) of a job
    that also removes channels, over the layers as the surgery left them: CreateJob leaves it
    to the worker, as the uploaded sizes no longer hold."""
    p = spec.pruning
    if not (
        p.HasField("schedule")
        and spec.training.recipe == pb.RECIPE_KEEP_ACCURACY
        and validation.per_weight(p)
        and not p.layer_sparsity
        and not p.sensitivity_scan
    ):
        return
    names = recipe.selected_layers(model, p)
    split = core_recipe.allocate(recipe.target_sparsity(p), {n: model.get_layer(n).count_params() for n in names})
    if split:
        p.layer_sparsity.update(split)
        reporter.log(
            "per-layer sparsity over the layers channel removal left: "
            + ", ".join(f"{name} {value:.4f}" for name, value in split.items())
        )


def _report(
    spec: pb.JobSpec,
    result: pb.PruneResult,
    before: Any,
    after: Any,
    workdir: pathlib.Path,
    log_dir: pathlib.Path,
    reporter: Reporter,
    x: Any = None,
    batch: int = 0,
) -> list[tuple[pathlib.Path, str]]:
    """Latency into ``result``; plots and TensorBoard logs as artifacts. A part that fails is a
    WARNING event, never a failed job: the pruned model is what the job is for."""

    def warn(message: str) -> None:
        reporter.log(message, level="WARNING")

    outputs: list[tuple[pathlib.Path, str]] = []
    reporter.phase(Phase.LATENCY, "measuring latency of the baseline and the pruned model")
    repeats = spec.report.latency_repeats or defaults.LATENCY_REPEATS
    batches = (1, batch or spec.training.batch_size)
    result.latency.extend(
        measure.latency_figures(before, after, result.device, batches, repeats, warn, x, reporter.check_between_steps)
    )
    reporter.phase(Phase.REPORT, "writing the report")  # checks the time limit: no report warning
    try:
        outputs += report.plots(result, workdir)
    except Exception as exc:  # noqa: BLE001
        warn(f"no plots: {type(exc).__name__}: {exc}")
    archive = report.tensorboard_archive(log_dir, workdir)
    if archive is not None:
        outputs.append((archive, "tensorboard"))
    return outputs


SCAN_SAMPLES = 1024


def _scan(model: Any, p: pb.PruningSpec, x: Any, y: Any, loss: Any, reporter: Reporter) -> None:
    """Splits the schedule's target over the layers from a sensitivity scan on the last
    training samples (what Keras holds out for validation), into ``p.layer_sparsity``."""
    if isinstance(y, (dict, list)) or isinstance(x, dict):
        reporter.log("sensitivity scan skipped: it measures single-input, single-output models", level="WARNING")
        return
    names = recipe.selected_layers(model, p)
    n = min(SCAN_SAMPLES, length(x))
    losses = sensitivity.scan(model, names, x[-n:], y[-n:], loss)
    sizes = {name: measure.kernel_size(model.get_layer(name)) for name in names}
    split = sensitivity.allocate(recipe.target_sparsity(p), losses, sizes)
    p.layer_sparsity.clear()
    p.layer_sparsity.update(split)
    reporter.log("sensitivity scan: " + ", ".join(f"{name} {s:.3f}" for name, s in split.items()))
