"""Structured pruning: whole channels and units removed by dependency group, so the model
really gets smaller and faster. ``graph`` finds the groups, ``importance`` ranks channels,
``surgery`` builds the smaller model; :func:`prune_channels` runs the three."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tf_keras as keras

from ..measure import leaf_layers
from .graph import PRODUCERS, TRANSPOSED, Graph, Group, build
from .importance import CRITERIA, scores
from .surgery import keep_masks, shrink

__all__ = ["CRITERIA", "Graph", "Group", "Options", "Outcome", "build", "keep_masks", "prune_channels", "shrink"]


@dataclass
class Options:
    """What to remove.

    Attributes:
        ratio: fraction of channels removed from every prunable group, in [0, 1).
        layer_ratios: per-layer overrides, keyed by the producer's name (a Conv or Dense);
            a group tying several producers takes the smallest of their ratios.
        min_channels: no group keeps fewer channels than this.
        round_to: kept channel counts are rounded up to a multiple of this (8 suits SIMD).
        criterion: "l1", "l2", "bn_scale" or "taylor" (see ``importance``).
        taylor_batches: batches of training data the Taylor estimate uses.
        excluded: producers not to shrink (left out by the layer selection).
    """

    ratio: float = 0.0
    layer_ratios: Mapping[str, float] = field(default_factory=dict)
    min_channels: int = 1
    round_to: int = 1
    criterion: str = "l1"
    taylor_batches: int = 4
    excluded: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name, value in [("ratio", self.ratio), *self.layer_ratios.items()]:
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ratio of {name} must be in [0, 1), got {value}")
        if self.min_channels < 1 or self.round_to < 1:
            raise ValueError(f"min_channels and round_to must be >= 1, got {self.min_channels}, {self.round_to}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")


@dataclass
class Outcome:
    """The smaller model and what happened to each producer."""

    model: Any
    graph: Graph
    keep: dict[int, np.ndarray]
    widths: list[tuple[str, int, int]]  # (producer, channels before, after)
    left_whole: list[tuple[str, str]]  # (producer, why its channels could not be removed)


def ratios(graph: Graph, options: Options) -> tuple[dict[int, float], list[tuple[str, str]]]:
    """The ratio each prunable group is cut by, and the producers left whole with the reason."""
    out: dict[int, float] = {}
    left: list[tuple[str, str]] = []
    for g in graph.groups:
        if not g.producers:
            continue
        excluded = sorted(set(g.producers) & options.excluded)
        reasons = g.reasons + ([f"{', '.join(excluded)} not selected by spec.pruning.layers"] if excluded else [])
        if reasons:
            left += [(p, "; ".join(reasons)) for p in g.producers]
            continue
        overrides = [options.layer_ratios[p] for p in g.producers if p in options.layer_ratios]
        ratio = min(overrides) if overrides else options.ratio
        if ratio > 0:
            out[g.id] = ratio
    return out, left


def prune_channels(model: Any, options: Options, data: tuple[Any, Any, Any] | None = None) -> Outcome:
    """Removes the least important channels of every group that can shrink safely.

    Args:
        model: a tf_keras functional or Sequential model (not modified).
        options: ratios, rounding and the importance criterion.
        data: (x, y, loss function): a few training batches, for the "taylor" criterion.

    Returns:
        The smaller model (uncompiled) with the widths before and after and the layers left
        whole, each with its reason.

    Example:
        >>> outcome = prune_channels(model, Options(ratio=0.5, round_to=8))
        >>> outcome.model.count_params() < model.count_params()
        True
    """
    graph = build(model)
    cut, left = ratios(graph, options)
    ranked = scores(graph, options.criterion, data, options.taylor_batches) if cut else {}
    keep = keep_masks(graph, ranked, cut, options.min_channels, options.round_to)
    for group_id in sorted(set(cut) - set(keep)):  # asked to shrink, kept whole by the rounding
        group = graph.groups[group_id]
        why = _kept_whole(group.size, cut[group_id], options.min_channels, options.round_to)
        left += [(p, why) for p in group.producers]
    named = {name for name, _ in left} | {p for g in graph.groups for p in g.producers}
    for name, why in graph.apart.items():  # a shared Conv or Dense, a nested model: in no group
        if name not in named and isinstance(model.get_layer(name), (*PRODUCERS, *TRANSPOSED, keras.Model)):
            left.append((name, why))
            named.add(name)
    for layer in leaf_layers(model):  # layers of no group: their width stays, said
        if isinstance(layer, _KEEP_WIDTH) and layer.name not in named:
            left.append(
                (layer.name, f"{type(layer).__name__} layers keep their width (embeddings and recurrent layers)")
            )
    small = shrink(graph, keep)
    widths = [(name, _channels(model.get_layer(name)), _channels(small.get_layer(name))) for name in graph.outputs]
    return Outcome(small, graph, keep, widths, left)


_KEEP_WIDTH = tuple(
    getattr(keras.layers, name)
    for name in ("Embedding", "SimpleRNN", "GRU", "LSTM", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
    if hasattr(keras.layers, name)
)


def _kept_whole(size: int, ratio: float, min_channels: int, round_to: int) -> str:
    """Why a group given ``ratio`` keeps all its ``size`` channels (see keep_masks)."""
    kept = size - int(size * ratio)
    if kept == size:
        return f"a ratio of {ratio:g} cuts none of its {size} channels"
    if round_to > 1 and -(-kept // round_to) * round_to >= size:
        return f"round_to {round_to} rounds the {kept} channels a ratio of {ratio:g} keeps up to all {size}"
    return f"min_channels {min_channels} keeps all {size} channels (a ratio of {ratio:g} keeps {kept})"


def _channels(layer: Any) -> int:
    # Not the last axis: a channels_first convolution's channels come first.
    return int(getattr(layer, "units", None) or layer.filters)
