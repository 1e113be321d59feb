"""The SDK's PruneResult gives every figure of the contract's result as an attribute: the
recipe, the history, the latency, the phase timings and the exports' accuracy too."""

from __future__ import annotations

from pruning.v1 import pruning_pb2 as pb
from pruning_client.results import PruneResult


def test_the_contract_s_other_fields_are_attributes():
    raw = pb.PruneResult(
        recipe=pb.RecipeResult(recipe=pb.RECIPE_KEEP_ACCURACY),
        history=[pb.EpochSummary(epoch=1, loss=0.5), pb.EpochSummary(epoch=2, loss=0.25)],
        latency=[pb.Latency(runtime="tf", batch_size=1, before_ms=2.0, after_ms=1.0)],
        phase_seconds={"load": 0.5, "fine_tune": 4.0},
        export_accuracy=[pb.ExportAccuracy(format="tflite", accuracy=0.97, samples=100)],
    )
    result = PruneResult.from_proto(raw)
    assert result.recipe.recipe == pb.RECIPE_KEEP_ACCURACY
    assert [h.loss for h in result.history] == [0.5, 0.25]
    assert [(x.runtime, x.after_ms) for x in result.latency] == [("tf", 1.0)]
    assert result.phase_seconds == {"load": 0.5, "fine_tune": 4.0}
    assert [(x.format, x.accuracy) for x in result.export_accuracy] == [("tflite", 0.97)]
    assert result.to_dict()["phase_seconds"] == {"load": 0.5, "fine_tune": 4.0}
