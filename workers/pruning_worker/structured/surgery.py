"""Channel surgery: a new, smaller tf_keras model built from the old one's configuration with
the producers' widths changed, and the surviving weights copied slice by slice. No library
does this for Keras today (kerassurgeon stopped at TF 2.4), so it is written here, small."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .graph import PER_CHANNEL, TRANSPOSED, Graph

__all__ = ["keep_masks", "shrink"]


def keep_masks(
    graph: Graph, scores: dict[int, np.ndarray], ratios: dict[int, float], min_channels: int = 1, round_to: int = 1
) -> dict[int, np.ndarray]:
    """The channels each group keeps: its most important ones, ``1 - ratio`` of them, at
    least ``min_channels``, rounded up to a multiple of ``round_to`` (never above the width).
    Groups without a ratio, or with ratio 0, are absent (they keep everything)."""
    out = {}
    for group_id, ratio in ratios.items():
        size = graph.groups[group_id].size
        n = size - int(size * ratio)
        if round_to > 1:
            n = -(-n // round_to) * round_to
        n = min(size, max(n, min_channels, 1))
        if n == size:
            continue
        # Stable ranking, so equal scores keep the earlier channels (a ratio-0 surgery and
        # ties are reproducible).
        order = np.argsort(-np.asarray(scores[group_id]), kind="stable")[:n]
        mask = np.zeros(size, bool)
        mask[order] = True
        out[group_id] = mask
    return out


def _slice(layer: Any, name: str, w: np.ndarray, in_mask: np.ndarray, out_mask: np.ndarray) -> np.ndarray:
    """One weight of ``layer`` cut to the surviving input and output channels."""
    short = name.rsplit("/", 1)[-1].split(":")[0]
    if isinstance(layer, PER_CHANNEL):
        return w[..., in_mask, :] if short == "depthwise_kernel" else w[in_mask]
    if short == "depthwise_kernel":  # SeparableConv: (..., in, depth multiplier)
        return w[..., in_mask, :]
    if short == "pointwise_kernel":  # (..., in * depth multiplier, out)
        rows = np.repeat(in_mask, layer.depth_multiplier)
        return w[..., rows, :][..., out_mask]
    if short == "kernel":
        if isinstance(layer, TRANSPOSED):  # (..., out, in)
            return w[..., in_mask][..., out_mask, :]
        return w[..., in_mask, :][..., out_mask]
    if short == "bias":
        return w[out_mask]
    raise ValueError(f"no rule to cut weight {name!r} of {layer.name!r}")


def shrink(graph: Graph, keep: dict[int, np.ndarray]) -> Any:
    """A new tf_keras model of the same architecture with only the kept channels.

    Args:
        graph: the dependency groups of the model to shrink.
        keep: a boolean mask per group id (from :func:`keep_masks`); other groups stay whole.

    Returns:
        The smaller model, uncompiled, with the surviving weights copied.

    Example:
        >>> small = shrink(graph, keep_masks(graph, scores(graph, "l1"), {0: 0.5}))
    """
    model = graph.model
    config = copy.deepcopy(model.get_config())
    widths = {
        name: int(graph.mask(layout, keep).sum()) for name, layout in graph.outputs.items() if name not in graph.whole
    }
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name in widths:
            key = "units" if "units" in entry["config"] else "filters"
            entry["config"][key] = widths[name]
    small = type(model).from_config(config)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if layer.name not in graph.whole and (layer.name in graph.outputs or isinstance(layer, PER_CHANNEL)):
            in_mask = graph.mask(graph.inputs[layer.name], keep)
            out_mask = graph.mask(graph.outputs[layer.name], keep) if layer.name in graph.outputs else in_mask
            weights = [_slice(layer, v.name, w, in_mask, out_mask) for v, w in zip(layer.weights, weights, strict=True)]
        small.get_layer(layer.name).set_weights(weights)
    return small
