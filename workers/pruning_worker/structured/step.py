"""The structured step of a job: the spec turned into :class:`Options`, the self-check that
a surgery removing nothing reproduces the model, the surgery itself, and the figures of the
report (widths, layers left whole, parameters, FLOPs, latency before and after)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pruning.v1 import pruning_pb2 as pb
from pruning_core import defaults, validation

from .. import measure, tferrors
from ..errors import JobInputError
from . import Options, Outcome, prune_channels, shrink

__all__ = ["BATCHES", "options", "run"]

# Latency is reported for one sample (interactive use) and a batch (throughput).
BATCHES = (1, 64)
# A surgery that removes nothing must give the model's outputs back; float noise only.
IDENTITY_TOLERANCE = 1e-5


def options(p: pb.PruningSpec, model: Any) -> Options:
    """The spec's structured options, with the layers the selection leaves out excluded."""
    s = p.structured
    criterion = pb.ImportanceCriterion.Name(s.importance or pb.IMPORTANCE_CRITERION_L1)
    excluded = frozenset(
        layer.name for layer in model.layers if not validation.selected(type(layer).__name__, layer.name, p.layers)
    )
    return Options(
        ratio=s.ratio,
        layer_ratios=dict(s.layer_ratios),
        min_channels=s.min_channels or defaults.MIN_CHANNELS,
        round_to=s.round_to or defaults.ROUND_TO,
        criterion=criterion.removeprefix("IMPORTANCE_CRITERION_").lower(),
        taylor_batches=s.taylor_batches or defaults.TAYLOR_BATCHES,
        excluded=excluded,
    )


def _outputs(model: Any, x: Any) -> list[np.ndarray]:
    """The model's outputs on ``x`` as arrays: one, a list or tuple, or a dict (by key, sorted)."""
    out = model(x, training=False)
    if isinstance(out, dict):
        out = [out[key] for key in sorted(out)]
    return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]


def _head(x: Any, n: int) -> Any:
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def _check_identity(outcome: Outcome, x: Any) -> float:
    """The largest |difference| between the model and a surgery that removes no channel."""
    same = shrink(outcome.graph, {})
    diff = max(
        float(np.max(np.abs(a - b))) for a, b in zip(_outputs(outcome.graph.model, x), _outputs(same, x), strict=True)
    )
    if not diff <= IDENTITY_TOLERANCE:
        raise RuntimeError(f"channel surgery does not reproduce this model (max |diff| {diff:.3g}) before pruning")
    return diff


def run(model: Any, p: pb.PruningSpec, x: Any, y: Any, loss: Any) -> tuple[Any, pb.StructuredResult]:
    """Removes channels from ``model`` (tf_keras) as ``p.structured`` asks.

    Args:
        model: the model as uploaded (not modified).
        p: the pruning spec, with ``structured`` set.
        x, y: training data: a probe batch for the self-check, batches for Taylor.
        loss: the job's loss function, for Taylor.

    Returns:
        The smaller model (uncompiled) and the result so far (no latency yet).
    """
    names = [layer.name for layer in model.layers]
    outputs = [t._keras_history.layer.name for t in model.outputs]
    violations = validation.validate_against_model(
        pb.JobSpec(pruning=p), [(type(layer).__name__, layer.name) for layer in model.layers], outputs
    )
    if violations:
        raise JobInputError("; ".join(f"{field}: {text}" for field, text in violations))
    opts = options(p, model)
    with tferrors.step("structured pruning"):
        outcome = prune_channels(model, opts, data=(x, y, loss))
        diff = _check_identity(outcome, _head(x, 8))
    not_producers = sorted(set(opts.layer_ratios) - set(outcome.graph.outputs))
    if not_producers:
        raise JobInputError(f"spec.pruning.structured.layer_ratios: {_why_not_cut(model, not_producers)}")
    small = outcome.model
    layers = {name: i for i, name in enumerate(names)}
    result = pb.StructuredResult(
        params_before=model.count_params(),
        params_after=small.count_params(),
        flops_before=measure.flops(model, x),
        flops_after=measure.flops(small, x),
        groups=sum(1 for g in outcome.graph.groups if g.producers),
        groups_pruned=len(outcome.keep),
        criterion=opts.criterion,
        zero_ratio_max_abs_diff=diff,
    )
    for name, before, after in sorted(outcome.widths, key=lambda w: layers[w[0]]):
        kind = type(model.get_layer(name)).__name__
        result.layers.add(name=name, type=kind, channels_before=before, channels_after=after)
    for name, reason in sorted(outcome.left_whole, key=lambda w: layers.get(w[0], len(layers))):
        result.left_whole.add(name=name, reason=reason)
    return small, result


def _why_not_cut(model: Any, names: list[str]) -> str:
    """Why the layers ``names`` of ``layer_ratios`` have no channels to cut, layer by layer."""
    shared = [n for n in names if len(model.get_layer(n).inbound_nodes) > 1]
    others = [n for n in names if n not in shared]
    parts = []
    if shared:
        parts.append(f"{shared} are shared (called more than once), so their channels are left whole")
    if others:
        parts.append(
            f"{others} are not layers with channels of their own (Conv, Dense); name the layer that makes the channels"
        )
    return "; ".join(parts)
