"""Sparsity and size figures, measured on the stripped model and the exported files."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import math
import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from pruning.v1 import pruning_pb2 as pb

from . import tferrors
from .errors import STOPS


def device_name() -> str:
    """The device TensorFlow trains on here: "CPU" or "GPU:0 (<name>)"."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU:0 ({details.get('device_name', 'GPU')})"


def leaf_layers(model: Any) -> list[Any]:
    """The layers that hold weights themselves: nested models (tf_keras or Keras 3) opened up."""
    out = []
    for layer in model.layers:
        out += leaf_layers(layer) if hasattr(layer, "layers") and layer.layers else [layer]
    return out


def layer_named(model: Any, name: str) -> Any:
    """The leaf layer called ``name`` in ``model`` or a model nested in it. A Keras 3 export
    keeps the uploaded nesting that the tf_keras copy the job trains flattened, so the job's
    layer names are leaf names, which ``get_layer`` finds only at the top level."""
    for layer in leaf_layers(model):
        if layer.name == name:
            return layer
    return model.get_layer(name)  # a container, or Keras' own error naming the layers it has


# The weights TFMOT prunes (its prune_registry): a layer's kernel, an RNN cell's kernel and
# recurrent kernel, a separable convolution's pointwise kernel, an embedding table. Never a
# bias (a GRU's is 2-D), a depthwise kernel, a PReLU's alpha or a normalisation's scale.
_PRUNED_WEIGHT = re.compile(r"(kernel|recurrent_kernel|pointwise_kernel|embeddings)(_\d+)?")


def is_kernel(name: str, value: np.ndarray) -> bool:
    """A weight matrix pruning aims at, by its name (``dense/kernel:0``, ``kernel``)."""
    short = name.rsplit("/", 1)[-1].split(":", 1)[0]
    return value.ndim >= 2 and _PRUNED_WEIGHT.fullmatch(short) is not None


def kernels(layer: Any) -> list[np.ndarray]:
    """The weights of ``layer`` pruning aims at (:func:`is_kernel`), as arrays."""
    return [np.asarray(w) for w in layer.weights if is_kernel(w.name, np.asarray(w))]


def kernel_size(layer: Any) -> int:
    """Kernel weights of ``layer`` (what pruning counts)."""
    return sum(int(w.size) for w in kernels(layer))


def kernel_sparsities(model: Any) -> dict[str, float]:
    """The zero share of each leaf layer's kernels, by name (layers without one left out)."""
    out = {}
    for layer in leaf_layers(model):
        found = kernels(layer)
        size = sum(w.size for w in found)
        if size:
            out[layer.name] = 1.0 - sum(int(np.count_nonzero(w)) for w in found) / size
    return out


def fill_sparsity(
    result: pb.PruneResult, model: Any, pruned_layers: set[str], targets: dict[str, float] | None = None
) -> None:
    """Per-layer kernel sparsity (with each pruned layer's target), overall sparsity and
    parameter counts of ``model``."""
    total = nonzero = kernel_total = kernel_nonzero = 0
    for layer in leaf_layers(model):
        named = [(w.name, np.asarray(w)) for w in layer.weights]
        if not named:
            continue
        total += sum(w.size for _, w in named)
        nonzero += sum(int(np.count_nonzero(w)) for _, w in named)
        kernels = [w for name, w in named if is_kernel(name, w)]
        if not kernels:
            continue
        size = sum(w.size for w in kernels)
        nz = sum(int(np.count_nonzero(w)) for w in kernels)
        pruned = layer.name in pruned_layers
        result.layers.add(
            name=layer.name,
            type=type(layer).__name__,
            pruned=pruned,
            weights=size,
            nonzero=nz,
            sparsity=1.0 - nz / size,
            target_sparsity=(targets or {}).get(layer.name, 0.0) if pruned else 0.0,
        )
        if pruned:
            kernel_total += size
            kernel_nonzero += nz
    result.total_params = total
    result.nonzero_params = nonzero
    result.overall_sparsity = 1.0 - nonzero / total if total else 0.0
    result.pruned_kernel_sparsity = 1.0 - kernel_nonzero / kernel_total if kernel_total else 0.0


def sizes(path: pathlib.Path) -> pb.SizeStats:
    """Raw size and gzip (level 9) size of a file."""
    gz = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(gz, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    stats = pb.SizeStats(raw_bytes=path.stat().st_size, gzip_bytes=gz.stat().st_size)
    gz.unlink()
    return stats


def input_shapes(model: Any, batch: int, x: Any = None) -> dict[str, list[int]]:
    """The shape of a batch of ``batch`` samples for each input of ``model``, by input name:
    the model's own, with the dimensions it leaves open (a sequence length, an image size)
    taken from the samples of the job's data ``x`` (an array, a list or a dict by input name).

    Example:
        >>> input_shapes(text_model, 64, x_train)  # Input((None,)), samples of 40 tokens
        {'tokens': [64, 40]}
    """
    names = list(model.input_names)
    if isinstance(x, dict):
        data = x
    else:
        data = dict(zip(names, [] if x is None else x if isinstance(x, list | tuple) else [x]))
    out = {}
    for name, t in zip(names, model.inputs, strict=True):
        shape = list(t.shape[1:])
        if None in shape:
            if name not in data:
                raise ValueError(f"input {name!r} has shape {shape} with open dimensions and no data to take them from")
            sample = np.shape(data[name])[1:]
            shape = [s if d is None else d for d, s in zip(shape, sample, strict=True)]
        out[name] = [batch, *shape]
    return out


def _input_specs(model: Any, batch: int, x: Any = None) -> list[Any]:
    shapes = input_shapes(model, batch, x).values()
    return [tf.TensorSpec(shape, t.dtype) for shape, t in zip(shapes, model.inputs, strict=True)]


def _call(model: Any) -> Any:
    # One input goes in bare, several as a list, as Keras functional models take them.
    return tf.function(lambda *x: model(list(x) if len(x) > 1 else x[0], training=False))


@contextlib.contextmanager
def _grouped_convolutions_in_line(model: Any) -> Iterator[None]:
    """While ``model``'s graph is traced only to be counted: tf_keras runs a grouped
    convolution (``groups`` > 1) in a nested XLA function, whose output shape the graph does
    not know, so the profiler counted nothing of it nor of what follows it. Traced as the plain
    convolution op (which knows groups from the kernel's shape), it is counted as any other.
    Only this model's layers are changed (an attribute of each, removed after): another
    model traced meanwhile keeps the nested function its CPU needs."""
    from tf_keras.src.layers.convolutional.base_conv import Conv

    grouped = [layer for layer in model._flatten_layers() if isinstance(layer, Conv) and layer.groups > 1]
    for layer in grouped:  # past Keras' attribute tracking: not a weight, not a sublayer
        object.__setattr__(layer, "_jit_compiled_convolution_op", layer.convolution_op)
    try:
        yield
    finally:
        for layer in grouped:
            object.__delattr__(layer, "_jit_compiled_convolution_op")


def flops(model: Any, x: Any = None) -> int:
    """Floating-point operations of one forward pass on one sample (of the shape of the samples
    of ``x`` where the model leaves a dimension open), counted by TensorFlow's profiler on the
    frozen inference graph (a multiply-add counts 2; a grouped convolution its own share)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    with _grouped_convolutions_in_line(model):
        traced = _call(model).get_concrete_function(*_input_specs(model, 1, x))
    frozen = convert_variables_to_constants_v2(traced)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
    )
    return int(info.total_float_ops)


def _probe(model: Any, batch: int, x: Any = None) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = input_shapes(model, batch, x).values()
    return [rng.random(shape).astype(t.dtype.as_numpy_dtype) for shape, t in zip(shapes, model.inputs, strict=True)]


# A timed sample lasts at least this long: one call of a small model takes microseconds, too
# close to the timer's own cost and the scheduler's jitter to time alone.
SAMPLE_S = 0.002
MAX_CALLS_PER_SAMPLE = 1000
MIN_SPREAD_SAMPLES = 5
# Before the timed samples both runs are called in alternation for at least this long: the
# first to run after an interpreter is built ran slower for a whole measurement (0.038 against
# 0.011 ms for the same model, told apart), as caches and a delegate's threads came up.
WARMUP_S = 0.2
# During the warm-up ``check`` (a round trip to the job store) runs at most this often: before
# every pair it ran thousands of times for a model of microseconds a call.
WARMUP_CHECK_S = 0.05
# Medians closer than this share of the faster are no speed-up to count on, however tight the
# samples: a busy-wait's quartiles are a microsecond wide, and the order of two runs alone
# parted identical work by 0.05%.
MIN_RELATIVE_DIFFERENCE = 0.02


@dataclass
class Paired:
    """Median milliseconds per call of two runs timed side by side, and whether their middle
    halves (25th to 75th percentile of the samples) overlap or their medians are within 2% of
    each other: a difference then is not told apart from the machine's noise."""

    a_ms: float
    b_ms: float
    within_noise: bool
    calls_per_sample: int


def paired_median_ms(
    run_a: Any, run_b: Any, repeats: int, warmup: int = 2, check: Callable[[], None] | None = None
) -> Paired:
    """``repeats`` samples of ``run_a`` and of ``run_b``, after both are called in alternation
    for :data:`WARMUP_S` (and at least ``warmup`` times), taken in alternation (a b, b a, ...)
    so that load drifting on a shared machine weighs on both alike; each sample calls its run
    enough times to last :data:`SAMPLE_S` (the same count for both). ``check`` runs before
    each pair of samples (the job's time limit and cancel: 40 repeats of a large batch ran a
    job 3 minutes past its limit of 20 s)."""
    warm_until = time.perf_counter() + WARMUP_S
    checked = -math.inf
    for done in itertools.count():
        now = time.perf_counter()
        if done >= warmup and now >= warm_until:
            break
        if check is not None and now - checked >= WARMUP_CHECK_S:
            checked = now
            check()
        run_a()
        run_b()
    once = []
    for run in (run_a, run_b):
        started = time.perf_counter()
        run()
        once.append(time.perf_counter() - started)
    calls = max(1, min(MAX_CALLS_PER_SAMPLE, int(SAMPLE_S / max(min(once), 1e-7))))
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        if check is not None:
            check()
        order = ((0, run_a), (1, run_b)) if i % 2 == 0 else ((1, run_b), (0, run_a))
        for slot, run in order:
            started = time.perf_counter()
            for _ in range(calls):
                run()
            times[slot].append((time.perf_counter() - started) / calls)
    a25, a50, a75 = np.percentile(times[0], (25, 50, 75)) * 1000.0
    b25, b50, b75 = np.percentile(times[1], (25, 50, 75)) * 1000.0
    # Below MIN_SPREAD_SAMPLES runs the quartiles say nothing: the difference is not told apart.
    told_apart = (
        repeats >= MIN_SPREAD_SAMPLES
        and (a75 < b25 or b75 < a25)
        and abs(a50 - b50) > MIN_RELATIVE_DIFFERENCE * min(a50, b50)
    )
    return Paired(float(a50), float(b50), not told_apart, calls)


def tf_runner(model: Any, batch: int, x: Any = None) -> Any:
    """A callable running one inference of ``model`` (a traced tf.function) on a batch of
    ``batch`` random samples (shaped as :func:`input_shapes` says), on TensorFlow's default
    device, to the last output value."""
    fn = _call(model).get_concrete_function(*_input_specs(model, batch, x))
    probe = [tf.constant(a) for a in _probe(model, batch, x)]
    return lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(*probe))


def tflite_bytes(model: Any) -> bytes:
    """``model`` converted to a float TFLite flatbuffer."""
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def tflite_pair(before: Any, after: Any, warn: Callable[[str], None]) -> tuple[bytes, bytes] | None:
    """Both models as float TFLite flatbuffers, or None (``warn`` says why) when TFLite cannot
    convert them: latency then has TensorFlow's figures only, never a failed job."""
    try:
        return tflite_bytes(before), tflite_bytes(after)
    except Exception as exc:  # noqa: BLE001 - TFLite's converter raises many kinds
        warn(f"no TFLite latency: the model does not convert ({tferrors.root_cause(exc)})")
        return None


def tflite_runner(flatbuffer: bytes, batch: int, shapes: dict[str, list[int]] | None = None) -> Any:
    """A callable running one invoke of the TFLite interpreter (XNNPACK, TFLite's default CPU
    delegate for float models, on all cores) on a batch of ``batch`` random samples, of the
    shapes ``shapes`` (by Keras input name, from :func:`input_shapes`) where given."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=os.cpu_count() or 1)
    details = interpreter.get_input_details()
    for d in details:
        # The converter names an input "serving_default_<Keras name>:0", in an order of its own.
        name = d["name"].removeprefix("serving_default_").rsplit(":", 1)[0]
        shape = (shapes or {}).get(name)
        if shape is None and shapes and len(shapes) == len(details) == 1:
            (shape,) = shapes.values()
        interpreter.resize_tensor_input(d["index"], shape or [batch, *d["shape"][1:]])
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], rng.random(d["shape"]).astype(d["dtype"]))
    return interpreter.invoke


EXPORT_EVAL_SAMPLES = 10_000
_EVAL_BATCH = 256


def tflite_accuracy(path: pathlib.Path, x: Any, y: Any, limit: int = EXPORT_EVAL_SAMPLES) -> tuple[float, int] | None:
    """Test accuracy of the TFLite file ``path`` on up to ``limit`` samples, run by the TFLite
    interpreter (quantized inputs quantized as the file says); None when the model is not one
    input to one output of class scores, or the labels are not integer classes."""
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]  # (n, 1) class labels, as Keras takes them
    if isinstance(x, (dict, list, tuple)) or labels.ndim != 1 or labels.dtype.kind not in "iuf":
        return None
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            return None  # not class labels
        labels = labels.astype(np.int64)
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        return None
    (inp,), (out,) = inputs, outputs
    n = min(len(labels), limit)
    correct, shape = 0, None
    for start in range(0, n, _EVAL_BATCH):
        batch = np.asarray(x[start : min(n, start + _EVAL_BATCH)])
        if np.issubdtype(inp["dtype"], np.integer) and inp["quantization"][0]:
            scale, zero = inp["quantization"]
            limits = np.iinfo(inp["dtype"])
            batch = np.clip(np.round(batch / scale + zero), limits.min, limits.max)  # no wrap-around
        batch = batch.astype(inp["dtype"])
        if batch.shape != shape:
            interpreter.resize_tensor_input(inp["index"], batch.shape)
            interpreter.allocate_tensors()
            shape = batch.shape
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        scores = interpreter.get_tensor(out["index"])  # quantized or not: the same argmax
        if scores.ndim != 2 or scores.shape[1] < 2:
            return None
        correct += int(np.sum(scores.argmax(axis=1) == labels[start : start + len(batch)]))
    return (correct / n, n) if n else None


def latency_figures(
    before: Any,
    after: Any,
    device: str,
    batches: Iterable[int],
    repeats: int,
    warn: Callable[[str], None],
    x: Any = None,
    check: Callable[[], None] | None = None,
) -> list[pb.Latency]:
    """Latency of ``before`` and ``after`` (:func:`latency_pairs`: TensorFlow on ``device`` and
    TFLite (XNNPACK) on the CPU, at each of ``batches``, samples shaped like those of ``x``
    where a model leaves a dimension open). A model TFLite cannot convert gets TensorFlow's
    figures, and one that cannot be measured none: ``warn`` says why, and the job goes on (the
    pruned model is what it is for). ``check`` runs before each pair of timed samples (the
    job's time limit, a cancel, the worker's shutdown): what it raises stops the job."""
    try:
        flat = tflite_pair(before, after, warn)
        with tferrors.step("latency measurement"):
            return latency_pairs(before, after, device, batches, repeats, flat, x, check)
    except STOPS:
        raise
    except Exception as exc:  # noqa: BLE001 - a figure the job can go without
        warn(f"no latency figures: {tferrors.root_cause(exc)}")
        return []


def latency_pairs(
    before: Any,
    after: Any,
    device: str,
    batches: Iterable[int],
    repeats: int,
    flat: tuple[bytes, bytes] | None,
    x: Any = None,
    check: Callable[[], None] | None = None,
) -> list[pb.Latency]:
    """Median milliseconds of one inference of ``before`` and ``after``, timed in alternation
    (:func:`paired_median_ms`), for each batch size: TensorFlow on ``device``, and TFLite
    (XNNPACK) on the CPU from the flatbuffers ``flat`` of both models when given. Samples
    have the shape of those of the job's data ``x`` where the model leaves a dimension open."""
    out = []
    for batch in dict.fromkeys(batches):
        shapes = input_shapes(before, batch, x)
        pairs = [("tf", device, tf_runner(before, batch, x), tf_runner(after, batch, x))]
        if flat is not None:
            runners = tflite_runner(flat[0], batch, shapes), tflite_runner(flat[1], batch, shapes)
            pairs.append(("tflite", "CPU (XNNPACK)", *runners))
        for runtime, where, run_before, run_after in pairs:
            timed = paired_median_ms(run_before, run_after, repeats, check=check)
            out.append(
                pb.Latency(
                    runtime=runtime,
                    device=where,
                    batch_size=batch,
                    before_ms=timed.a_ms,
                    after_ms=timed.b_ms,
                    repeats=repeats,
                    within_noise=timed.within_noise,
                    calls_per_run=timed.calls_per_sample,
                )
            )
    return out
