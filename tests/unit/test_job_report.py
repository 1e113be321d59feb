"""The job report of a structured pruning job shows what it did (it had no structured section
and a recipe of "schedule steps 0 to 0 every 0"), and its latency says when it is noise."""

from __future__ import annotations

from pruning.v1 import pruning_pb2 as pb
from pruning_client.report import job_report


def _structured_job() -> pb.Job:
    job = pb.Job(id="j" * 24, state=pb.JOB_STATE_SUCCEEDED)
    r = job.result
    r.device = "CPU"
    r.recipe.CopyFrom(pb.RecipeResult(name="keep_accuracy", learning_rate=0.002, epochs_run=2, best_epoch=2))
    r.structured.CopyFrom(
        pb.StructuredResult(
            params_before=97962,
            params_after=24922,
            flops_before=13_100_000,
            flops_after=6_560_000,
            groups=4,
            groups_pruned=3,
            criterion="l1",
            layers=[pb.LayerWidth(name="stem", type="Conv2D", channels_before=32, channels_after=16)],
            left_whole=[pb.LayerLeftWhole(name="logits", reason="reaches the model output 'logits'")],
            latency=[pb.Latency(runtime="tflite", batch_size=64, before_ms=3.0, after_ms=0.8, repeats=10)],
        )
    )
    r.latency.append(pb.Latency(runtime="tflite", batch_size=1, before_ms=0.014, after_ms=0.0095, within_noise=True))
    return job


def test_a_structured_job_report_shows_what_was_cut():
    markdown, html = job_report(_structured_job())
    assert "Structured pruning" in markdown and "97,962 -> 24,922" in markdown
    assert "13,100,000 -> 6,560,000" in markdown and "3.75x" in markdown
    assert "| stem | Conv2D | 32 | 16 |" in markdown
    assert "left whole: logits" in markdown
    assert "no sparsity schedule (structured pruning only)" in markdown and "steps 0 to 0" not in markdown
    assert "1.47x, within noise" in markdown
    assert "Structured pruning" in html
