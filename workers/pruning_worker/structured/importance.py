"""How much each channel of a group matters: L1 or L2 norm of its filters, the |scale| of
its BatchNormalization, or a first-order Taylor estimate |w * dL/dw| from a few batches.
A group's score is the sum of its members' scores, as in Torch-Pruning's group importance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from ..inputs import rows
from .graph import TRANSPOSED, Graph, Group

__all__ = ["CRITERIA", "scores"]

CRITERIA = ("l1", "l2", "bn_scale", "taylor")


def _out_kernel(layer: Any) -> tuple[Any, int]:
    """The variable whose output axis indexes the layer's channels, and that axis."""
    if isinstance(layer, keras.layers.SeparableConv1D | keras.layers.SeparableConv2D):
        return layer.pointwise_kernel, -1
    return layer.kernel, -2 if isinstance(layer, TRANSPOSED) else -1


def _per_channel(values: np.ndarray, axis: int, reduce: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]) -> Any:
    moved = np.moveaxis(values, axis, -1)
    return reduce(moved, tuple(range(moved.ndim - 1)))


def _norm(graph: Graph, producer: str, order: int) -> np.ndarray:
    variable, axis = _out_kernel(graph.model.get_layer(producer))
    w = np.asarray(variable)
    if order == 1:
        return np.asarray(_per_channel(np.abs(w), axis, np.sum))
    return np.sqrt(_per_channel(w * w, axis, np.sum))


def _bn_scale(graph: Graph, group: Group) -> np.ndarray | None:
    """|gamma| of the group's BatchNormalization layers, channel by channel of the group: a
    BatchNormalization after a Concatenate holds other groups' channels too, and one after
    a Flatten each channel once per position (summed)."""
    found = []
    for layer in (graph.model.get_layer(name) for name in group.per_channel):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
            groups, channels = graph.entries(graph.inputs[layer.name])
            mine = groups == group.id
            score = np.zeros(group.size)
            np.add.at(score, channels[mine], np.abs(np.asarray(layer.gamma))[mine])
            found.append(score)
    return np.sum(found, axis=0) if found else None


def _taylor(graph: Graph, producers: list[str], data: tuple[Any, Any, Any], batches: int) -> dict[str, np.ndarray]:
    x, y, loss_fn = data
    variables = {name: _out_kernel(graph.model.get_layer(name)) for name in producers}
    totals = {name: np.zeros(v.shape[axis]) for name, (v, axis) in variables.items()}
    n = len(next(iter(x.values())) if isinstance(x, dict) else x)
    size = max(1, min(64, n // max(1, batches)))
    for start in range(0, min(n, size * batches), size):
        xb, yb = rows(x, start, start + size), rows(y, start, start + size)
        with tf.GradientTape() as tape:
            out = graph.model(xb, training=False)
            loss = loss_fn(yb, out)  # summed over the outputs (pruning_worker.losses.JobLoss.function)
        grads = tape.gradient(loss, [v for v, _ in variables.values()])
        for (name, (v, axis)), g in zip(variables.items(), grads, strict=True):
            if g is not None:
                totals[name] += _per_channel(np.abs(np.asarray(v) * np.asarray(g)), axis, np.sum)
    return totals


def scores(graph: Graph, criterion: str, data: tuple[Any, Any, Any] | None = None, batches: int = 4) -> dict[int, Any]:
    """Per-channel importance of every prunable group, keyed by group id.

    Args:
        graph: the model's dependency groups.
        criterion: one of ``CRITERIA``. "bn_scale" falls back to "l1" in a group without a
            BatchNormalization; "taylor" needs ``data``.
        data: (x, y, loss function) for "taylor": a few batches of the training data.
        batches: how many batches the Taylor estimate averages over.

    Example:
        >>> scores(build(model), "l2")[0].shape
        (32,)
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    groups = [g for g in graph.groups if g.prunable]
    taylor: dict[str, np.ndarray] = {}
    if criterion == "taylor":
        if data is None:
            raise ValueError("the taylor criterion needs data")
        taylor = _taylor(graph, [p for g in groups for p in g.producers], data, batches)
    out = {}
    for g in groups:
        bn = _bn_scale(graph, g) if criterion == "bn_scale" else None
        if bn is not None:
            out[g.id] = bn
        elif criterion == "taylor":
            out[g.id] = np.sum([taylor[p] for p in g.producers], axis=0)
        else:
            out[g.id] = np.sum([_norm(graph, p, 2 if criterion == "l2" else 1) for p in g.producers], axis=0)
    return out
