"""Sparsity and size figures, measured on the stripped model and the exported files."""

from __future__ import annotations

import gzip
import pathlib
import shutil
from typing import Any

import numpy as np
import tensorflow as tf

from pruning.v1 import pruning_pb2 as pb


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


def is_kernel(name: str, value: np.ndarray) -> bool:
    """A weight matrix pruning aims at: not a bias or a normalisation vector, and not a
    depthwise kernel (TFMOT leaves those whole, in DepthwiseConv2D and SeparableConv2D)."""
    return value.ndim >= 2 and "depthwise_kernel" not in name


def fill_sparsity(result: pb.PruneResult, model: Any, pruned_layers: set[str]) -> None:
    """Per-layer kernel sparsity, overall sparsity and parameter counts of ``model``."""
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
