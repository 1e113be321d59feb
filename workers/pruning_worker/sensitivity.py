"""Per-layer sparsity from a quick sensitivity scan: each prunable layer's kernel is cut by
magnitude to a few sparsities, alone, and the loss on a probe batch is measured; then the
target is split so that the layers that lose least take the most. No training: a scan costs a
few forward passes per layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import tferrors
from .measure import is_kernel

__all__ = ["GRID", "allocate", "scan"]

GRID = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def _kernel_index(layer: Any) -> int:
    for i, w in enumerate(layer.weights):
        if is_kernel(w.name, np.asarray(w)):
            return i
    raise ValueError(f"layer {layer.name} has no kernel")


def scan(model: Any, layers: list[str], x: Any, y: Any, loss_fn: Any) -> dict[str, list[float]]:
    """Loss on (``x``, ``y``) with each layer of ``layers`` alone cut to each sparsity of GRID."""
    out: dict[str, list[float]] = {}
    with tferrors.step("sensitivity scan"):
        for name in layers:
            layer = model.get_layer(name)
            weights = layer.get_weights()
            k = _kernel_index(layer)
            kernel = weights[k]
            order = np.argsort(np.abs(kernel), axis=None)
            losses = []
            for sparsity in GRID:
                cut = kernel.copy().reshape(-1)
                cut[order[: round(sparsity * cut.size)]] = 0
                layer.set_weights([*weights[:k], cut.reshape(kernel.shape), *weights[k + 1 :]])
                losses.append(float(np.mean(loss_fn(y, model(x, training=False)))))
            layer.set_weights(weights)
            out[name] = losses
    return out


def allocate(target: float, losses: dict[str, list[float]], sizes: dict[str, int]) -> dict[str, float]:
    """Final sparsity per layer with the size-weighted mean ``target``: starting from all layers
    dense, the next step of GRID always goes to the layer whose loss grows least per weight
    pruned, until the target is reached (the last step taken only in part)."""
    total = sum(sizes.values())
    level = dict.fromkeys(losses, 0)
    sparsity = dict.fromkeys(losses, 0.0)
    needed = target * total
    while sum(sparsity[n] * sizes[n] for n in losses) < needed - 1e-9:
        candidates = [n for n in losses if level[n] + 1 < len(GRID)]
        if not candidates:
            break

        def cost(n: str) -> float:
            i = level[n]
            return (losses[n][i + 1] - losses[n][i]) / max(1.0, (GRID[i + 1] - GRID[i]) * sizes[n])

        best = min(candidates, key=cost)
        i = level[best]
        step = GRID[i + 1] - GRID[i]
        missing = needed - sum(sparsity[n] * sizes[n] for n in losses)
        if step * sizes[best] >= missing:
            sparsity[best] += missing / sizes[best]
            break
        sparsity[best] = GRID[i + 1]
        level[best] = i + 1
    return {n: round(s, 6) for n, s in sparsity.items()}
