"""Typed views of job results; each keeps the proto as ``.raw``."""

from __future__ import annotations

from dataclasses import dataclass, field

from pruning.v1 import pruning_pb2 as pb


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    type: str
    pruned: bool
    weights: int
    nonzero: int
    sparsity: float


@dataclass(frozen=True)
class PruneResult:
    """What a finished job measured."""

    baseline_accuracy: float
    baseline_loss: float
    pruned_accuracy: float
    pruned_loss: float
    accuracy_delta: float
    overall_sparsity: float
    pruned_kernel_sparsity: float
    layers: list[LayerSparsity]
    total_params: int
    nonzero_params: int
    size_before_raw: int
    size_before_gzip: int
    size_after_raw: int
    size_after_gzip: int
    compression_ratio: float
    fine_tune_seconds: float
    device: str
    model_artifact_id: str
    artifact_ids: dict[str, str]
    raw: pb.PruneResult = field(repr=False)

    @classmethod
    def from_proto(cls, r: pb.PruneResult) -> "PruneResult":
        return cls(
            baseline_accuracy=r.baseline.accuracy,
            baseline_loss=r.baseline.loss,
            pruned_accuracy=r.pruned.accuracy,
            pruned_loss=r.pruned.loss,
            accuracy_delta=r.accuracy_delta,
            overall_sparsity=r.overall_sparsity,
            pruned_kernel_sparsity=r.pruned_kernel_sparsity,
            layers=[LayerSparsity(l.name, l.type, l.pruned, l.weights, l.nonzero, l.sparsity) for l in r.layers],
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

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "raw"}
        out["layers"] = [dict(l.__dict__) for l in self.layers]
        return out
