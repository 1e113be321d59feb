"""Dependency groups of a tf_keras functional (or Sequential) model, after Torch-Pruning's
DepGraph: every set of layers whose weights must lose the same channels is one group.

The walk gives each tensor's last axis a *layout*: which channel spaces its entries come
from, in order. A producer (Conv, Dense, SeparableConv, ConvTranspose) opens a new space;
BatchNormalization, DepthwiseConv2D, activations, pooling and global pooling pass theirs
through; Add, Multiply and the other element-wise merges tie their inputs' spaces into one
(union-find); Concatenate lays its inputs' layouts end to end; Flatten repeats the channel
layout once per spatial position, so a following Dense loses the matching kernel rows.
A space that reaches a model output or input, or touches a layer the walk does not know,
is blocked and its group left whole, with the reason kept for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

__all__ = ["Graph", "Group", "build"]

L = keras.layers
PRODUCERS = (L.Conv1D, L.Conv2D, L.Conv3D, L.Dense, L.SeparableConv1D, L.SeparableConv2D)
TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
# Subclasses of the producers above that compute something else per channel.
NOT_PRODUCERS = (L.DepthwiseConv1D, L.DepthwiseConv2D)
PER_CHANNEL = (L.BatchNormalization, L.DepthwiseConv1D, L.DepthwiseConv2D)
MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
# Layers that act on each channel alone and hold no weights: the layout passes through.
PASS = (
    L.InputLayer,
    L.Activation,
    L.ReLU,
    L.LeakyReLU,
    L.ELU,
    L.ThresholdedReLU,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
    L.Rescaling,  # one scale and offset for every channel (checked in _why_not); x * 0.1 of Keras 3 too
    # image preprocessing and augmentation: spatial, or the same for each channel on its own
    L.Resizing,
    L.CenterCrop,
    L.RandomFlip,
    L.RandomRotation,
    L.RandomZoom,
    L.RandomTranslation,
    L.RandomContrast,
    L.RandomBrightness,
)


@dataclass(frozen=True)
class Space:
    """A run of channels opened by one producer (or a model input)."""

    id: int
    size: int


@dataclass(frozen=True)
class Block:
    """``inner`` (a layout) repeated ``repeat`` times: Flatten's spatial positions."""

    inner: tuple[Any, ...]
    repeat: int


Layout = tuple[Any, ...]  # of Space and Block, laid end to end along the last axis


@dataclass
class Group:
    """Layers that lose the same channels: producers (output axis), per-channel layers
    (BatchNormalization, depthwise) and consumers (input axis) of one tied set of spaces."""

    id: int
    size: int
    producers: list[str] = field(default_factory=list)
    per_channel: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return bool(self.producers) and not self.reasons


@dataclass
class Graph:
    """The groups of a model and how each layer's weights index into them."""

    model: Any
    groups: list[Group]
    space_group: dict[int, int]  # space id -> group id
    inputs: dict[str, Layout]  # layer name -> layout of its (first) input's last axis
    outputs: dict[str, Layout]  # producer name -> layout of its output
    # Layers the walk left whole (not understood, or shared): copied as they are, as their
    # weights need not index the layouts above (a depth multiplier, groups, channels_first).
    whole: set[str] = field(default_factory=set)
    # Of those, the shared layers and nested models, which make no group: why, by name.
    apart: dict[str, str] = field(default_factory=dict)

    def mask(self, layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Which entries of ``layout`` survive when group g keeps the channels ``keep[g]``
        (a boolean mask per group; groups not in ``keep`` keep all)."""
        parts = []
        for item in layout:
            if isinstance(item, Block):
                parts.append(np.tile(self.mask(item.inner, keep), item.repeat))
            else:
                group = self.space_group[item.id]
                parts.append(keep[group] if group in keep else np.ones(item.size, bool))
        return np.concatenate(parts) if parts else np.ones(0, bool)

    def entries(self, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
        """For each entry of ``layout``: the group its channel belongs to, and which channel
        of that group it is (a concatenation holds several groups, Flatten repeats them)."""
        groups, channels = [np.zeros(0, int)], [np.zeros(0, int)]
        for item in layout:
            if isinstance(item, Block):
                g, c = self.entries(item.inner)
                groups.append(np.tile(g, item.repeat))
                channels.append(np.tile(c, item.repeat))
            else:
                groups.append(np.full(item.size, self.space_group[item.id]))
                channels.append(np.arange(item.size))
        return np.concatenate(groups), np.concatenate(channels)

    def group_of(self, producer: str) -> Group:
        """The group whose channels ``producer`` makes."""
        (space,) = self.outputs[producer]
        return self.groups[self.space_group[space.id]]


class _Walk:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.reasons: dict[int, list[str]] = {}
        self.producer_of: dict[int, str] = {}
        self.per_channel: list[tuple[str, Layout]] = []
        self.consumers: list[tuple[str, Layout]] = []

    def space(self, size: int, reason: str = "") -> Space:
        self.parent.append(len(self.parent))
        self.sizes.append(size)
        if reason:
            self.reasons[len(self.parent) - 1] = [reason]
        return Space(len(self.parent) - 1, size)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def block(self, layout: Layout, reason: str) -> None:
        for space in _spaces(layout):
            self.reasons.setdefault(space.id, []).append(reason)


def _spaces(layout: Layout) -> list[Space]:
    out: list[Space] = []
    for item in layout:
        out += _spaces(item.inner) if isinstance(item, Block) else [item]
    return out


def _last_axis(layer: Any, axis: Any, rank: int) -> bool:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


# Activations that mix the channels of a sample (a softmax over the last axis): removing one
# channel changes every other one's value, zero or not, so no channel can go.
ACROSS_CHANNELS = frozenset({"softmax", "log_softmax"})


def _across_channels(layer: Any) -> str:
    """Why ``layer``'s own activation ties all its output channels together, or ''."""
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    if name in ACROSS_CHANNELS:
        return f"{type(layer).__name__} {layer.name!r} applies {name} across the channels"
    return ""


def _why_not(layer: Any, in_shapes: list[Any]) -> str:
    """Why a known layer cannot pass channels through here, or '' when it can."""
    rank = len(in_shapes[0]) if in_shapes and in_shapes[0] is not None else 0
    if isinstance(layer, L.Activation):
        return _across_channels(layer)
    if isinstance(layer, PRODUCERS + TRANSPOSED) and layer.weights and not layer.trainable:
        # a frozen kernel's filters are the user's; a frozen BatchNormalization's statistics
        # (common under trainable convolutions) lose nothing with the channels they follow
        return f"{type(layer).__name__} {layer.name!r} is frozen (trainable=False)"
    if isinstance(layer, L.Rescaling) and (np.ndim(layer.scale) or np.ndim(layer.offset)):
        return f"Rescaling {layer.name!r} scales each channel on its own"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"{type(layer).__name__} {layer.name!r} is channels_first"
    if isinstance(layer, L.BatchNormalization) and not _last_axis(layer, layer.axis, rank):
        return f"BatchNormalization {layer.name!r} normalises axis {layer.axis}, not the channels"
    if isinstance(layer, NOT_PRODUCERS) and layer.depth_multiplier != 1:
        return f"{type(layer).__name__} {layer.name!r} has depth_multiplier {layer.depth_multiplier}"
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)) and getattr(layer, "groups", 1) != 1:
        return f"{type(layer).__name__} {layer.name!r} is a grouped convolution"
    if isinstance(layer, L.Concatenate) and not _last_axis(layer, layer.axis, rank):
        return f"Concatenate {layer.name!r} joins along axis {layer.axis}, not the channels"
    return ""


def _shape(tensor: Any) -> list[Any]:
    return list(tensor.shape)


def build(model: Any) -> Graph:
    """The dependency groups of a tf_keras ``model`` (functional or Sequential).

    Example:
        >>> graph = build(model)
        >>> [(g.producers, g.reasons) for g in graph.groups]
        [(['conv1'], []), (['logits'], ["reaches the model output 'logits'"])]
    """
    walk = _Walk()
    layouts: dict[tuple[str, int, int], Layout] = {}
    inputs: dict[str, Layout] = {}
    outputs: dict[str, Layout] = {}
    whole: set[str] = set()
    apart: dict[str, str] = {}

    def key(tensor: Any) -> tuple[str, int, int]:
        h = tensor._keras_history
        return (h.layer.name, h.node_index, h.tensor_index)

    input_layers = [t._keras_history.layer for t in model.inputs]
    layers = input_layers + [layer for layer in model.layers if layer not in input_layers]
    for layer in layers:
        nodes = layer.inbound_nodes
        if isinstance(layer, keras.Model) or len(nodes) != 1:
            reason = (
                f"nested model {layer.name!r}"
                if isinstance(layer, keras.Model)
                else f"layer {layer.name!r} is shared (called {len(nodes)} times)"
            )
            whole.add(layer.name)
            apart[layer.name] = reason
            for node in nodes:
                for t in node.keras_inputs:
                    if key(t) in layouts:
                        walk.block(layouts[key(t)], reason)
                for i, t in enumerate(tf.nest.flatten(node.outputs)):
                    layouts[(layer.name, nodes.index(node), i)] = (walk.space(t.shape[-1] or 0, reason),)
            continue
        node = nodes[0]
        ins = [layouts[key(t)] for t in node.keras_inputs]
        in_shapes = [_shape(t) for t in node.keras_inputs]
        outs = tf.nest.flatten(node.outputs)
        if ins:
            inputs[layer.name] = ins[0]
        reason = _why_not(layer, in_shapes)
        out: Layout | None = None
        if reason:
            pass
        elif isinstance(layer, L.InputLayer) or not ins:
            out = (walk.space(outs[0].shape[-1] or 0, f"model input {layer.name!r} keeps its channels"),)
        elif isinstance(layer, NOT_PRODUCERS):
            walk.per_channel.append((layer.name, ins[0]))
            out = ins[0]
        elif isinstance(layer, PRODUCERS + TRANSPOSED):
            if not isinstance(layer, L.Dense) and any(isinstance(i, Block) for i in ins[0]):
                reason = f"{layer.name!r} takes a flattened input"
            else:
                walk.consumers.append((layer.name, ins[0]))
                # its input channels can go; its own are left whole under a softmax
                space = walk.space(outs[0].shape[-1], _across_channels(layer))
                walk.producer_of[space.id] = layer.name
                out = outputs[layer.name] = (space,)
        elif isinstance(layer, PER_CHANNEL):
            walk.per_channel.append((layer.name, ins[0]))
            out = ins[0]
        elif isinstance(layer, PASS) and len(ins) == 1:
            out = ins[0]
        elif isinstance(layer, MERGES):
            first = ins[0]
            if all(
                len(i) == len(first) and all(isinstance(s, Space) and s.size == f.size for s, f in zip(i, first))
                for i in ins
            ):
                for other in ins[1:]:
                    for a, b in zip(first, other, strict=True):
                        walk.union(a.id, b.id)
                out = first
            else:
                reason = f"{type(layer).__name__} {layer.name!r} merges differently laid-out inputs"
        elif isinstance(layer, L.Concatenate):
            out = tuple(item for i in ins for item in i)
        elif isinstance(layer, L.Flatten) and len(ins) == 1:
            spatial = in_shapes[0][1:-1]
            if all(isinstance(d, int) for d in spatial):
                out = (Block(ins[0], math.prod(spatial)),) if spatial else ins[0]
            else:
                reason = f"Flatten {layer.name!r} has an unknown input shape {in_shapes[0]}"
        else:
            reason = f"{type(layer).__name__} {layer.name!r} is not a layer structured pruning can shrink"
        if out is None:
            whole.add(layer.name)
            for layout in ins:
                walk.block(layout, reason)
            out = (walk.space(outs[0].shape[-1] or 0, reason),)
            if isinstance(layer, PRODUCERS + TRANSPOSED) and not isinstance(layer, NOT_PRODUCERS):
                walk.producer_of[out[0].id] = layer.name
                outputs[layer.name] = out
        for n in range(len(outs)):
            layouts[(layer.name, 0, n)] = out
    for tensor in model.outputs:
        walk.block(layouts[key(tensor)], f"reaches the model output {tensor._keras_history.layer.name!r}")

    roots = sorted({walk.find(i) for i in range(len(walk.parent))})
    index = {root: n for n, root in enumerate(roots)}
    space_group = {i: index[walk.find(i)] for i in range(len(walk.parent))}
    groups = [Group(n, walk.sizes[root]) for n, root in enumerate(roots)]
    for space_id, group_id in space_group.items():
        g = groups[group_id]
        for why in walk.reasons.get(space_id, []):
            if why not in g.reasons:
                g.reasons.append(why)
        if space_id in walk.producer_of:
            g.producers.append(walk.producer_of[space_id])
    for name, layout in walk.per_channel:
        for space in _spaces(layout):
            if name not in groups[space_group[space.id]].per_channel:
                groups[space_group[space.id]].per_channel.append(name)
    for name, layout in walk.consumers:
        for space in _spaces(layout):
            if name not in groups[space_group[space.id]].consumers:
                groups[space_group[space.id]].consumers.append(name)
    return Graph(model, groups, space_group, inputs, outputs, whole, apart)
