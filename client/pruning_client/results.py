"""Typed views of job results; each keeps the proto as ``.raw``."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pruning.v1 import pruning_pb2 as pb

__all__ = ["LayerSparsity", "PruneResult"]


@dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one layer's kernel, measured on the stripped model."""

    name: str
    type: str
    pruned: bool
    """Whether the layer was wrapped for pruning."""
    weights: int
    nonzero: int
    sparsity: float


@dataclass(frozen=True)
class PruneResult:
    """What a finished job measured.

    Example:
        >>> result = job.result(timeout=600)                 # doctest: +SKIP
        >>> print(result.pruned_accuracy, result.compression_ratio)  # doctest: +SKIP
        0.9712 3.02
    """

    baseline_accuracy: float
    baseline_loss: float
    pruned_accuracy: float
    pruned_loss: float
    accuracy_delta: float
    overall_sparsity: float
    """Zero fraction over all parameters of the stripped model."""
    pruned_kernel_sparsity: float
    """Zero fraction over the kernels of the pruned layers."""
    layers: list[LayerSparsity]
    total_params: int
    nonzero_params: int
    size_before_raw: int
    size_before_gzip: int
    size_after_raw: int
    size_after_gzip: int
    compression_ratio: float
    """size_before_gzip / size_after_gzip."""
    fine_tune_seconds: float
    device: str
    model_artifact_id: str
    """The pruned model (the first export)."""
    artifact_ids: dict[str, str]
    """Export format name ("keras", "saved_model", ...) to artifact id."""
    raw: pb.PruneResult = field(repr=False)

    @classmethod
    def from_proto(cls, r: pb.PruneResult) -> PruneResult:
        return cls(
            baseline_accuracy=r.baseline.accuracy,
            baseline_loss=r.baseline.loss,
            pruned_accuracy=r.pruned.accuracy,
            pruned_loss=r.pruned.loss,
            accuracy_delta=r.accuracy_delta,
            overall_sparsity=r.overall_sparsity,
            pruned_kernel_sparsity=r.pruned_kernel_sparsity,
            layers=[LayerSparsity(x.name, x.type, x.pruned, x.weights, x.nonzero, x.sparsity) for x in r.layers],
            total_params=r.total_params,
            nonzero_params=r.nonzero_params,
            size_before_raw=r.size_before.raw_bytes,
            size_before_gzip=r.size_before.gzip_bytes,
            size_after_raw=r.size_after.raw_bytes,
            size_after_gzip=r.size_after.gzip_bytes,
            compression_ratio=r.compression_ratio,
            fine_tune_seconds=r.fine_tune_seconds,
            device=r.device,
            model_artifact_id=r.artifacts[0].id if r.artifacts else "",
            artifact_ids={a.format: a.id for a in r.artifacts},
            raw=r,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (without ``raw``)."""
        out = {k: v for k, v in self.__dict__.items() if k != "raw"}
        out["layers"] = [dict(layer.__dict__) for layer in self.layers]
        return out

    def _repr_html_(self) -> str:
        """A table for notebooks: baseline against pruned, then one row per layer."""
        rows = [
            ("test accuracy", f"{self.baseline_accuracy:.4f}", f"{self.pruned_accuracy:.4f}"),
            ("test loss", f"{self.baseline_loss:.4f}", f"{self.pruned_loss:.4f}"),
            ("model size (raw bytes)", f"{self.size_before_raw:,}", f"{self.size_after_raw:,}"),
            ("model size (gzip bytes)", f"{self.size_before_gzip:,}", f"{self.size_after_gzip:,}"),
        ]
        summary = [
            ("accuracy delta", f"{self.accuracy_delta * 100:+.2f} pp"),
            ("gzip compression", f"{self.compression_ratio:.2f}x"),
            ("sparsity of the pruned kernels", f"{self.pruned_kernel_sparsity:.4f}"),
            ("sparsity of all parameters", f"{self.overall_sparsity:.4f}"),
            ("non-zero parameters", f"{self.nonzero_params:,} of {self.total_params:,}"),
            ("fine-tuning", f"{self.fine_tune_seconds:.1f} s on {self.device}"),
        ]
        layers = [
            (x.name, x.type, "yes" if x.pruned else "no", f"{x.weights:,}", f"{x.nonzero:,}", f"{x.sparsity:.4f}")
            for x in self.layers
        ]
        return "\n".join(
            [
                _table(("", "baseline", "pruned"), rows),
                _table(("", ""), summary),
                _table(("layer", "type", "pruned", "weights", "non-zero", "sparsity"), layers),
            ]
        )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def row(cells: Sequence[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    return (
        f"<table>\n<thead>{row(header, 'th')}</thead>\n<tbody>\n"
        + "\n".join(row(r, "td") for r in rows)
        + "\n</tbody>\n</table>"
    )
