"""Spec builders leave the server's defaults to the server; the result's notebook view."""

import click
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import PruneResult, constant_sparsity, export_format, job_spec, polynomial_decay

MODEL = "ab" * 32


def test_unset_parameters_stay_unset():
    training = job_spec(MODEL).training
    assert training == pb.TrainingSpec()
    assert not training.HasField("validation_split")
    assert list(job_spec(MODEL).export.formats) == []  # the server's default (keras)
    schedule = polynomial_decay(0.2, 0.6).polynomial_decay
    assert schedule.power == 0 and schedule.frequency == 0
    assert constant_sparsity(0.5).constant_sparsity.frequency == 0


def test_given_parameters_are_set():
    spec = job_spec(
        MODEL,
        epochs=3,
        batch_size=16,
        optimizer="sgd",
        learning_rate=0.01,
        loss="mse",
        seed=7,
        max_train_samples=100,
        validation_split=0.2,
        exports=("h5", "saved_model.zip"),
    )
    t = spec.training
    assert (t.epochs, t.batch_size, t.optimizer, t.loss, t.seed, t.max_train_samples) == (
        3,
        16,
        "sgd",
        "mean_squared_error",
        7,
        100,
    )
    assert t.learning_rate == pytest.approx(0.01) and t.validation_split == pytest.approx(0.2)
    assert list(spec.export.formats) == [pb.EXPORT_FORMAT_H5, pb.EXPORT_FORMAT_SAVED_MODEL]


def test_an_explicit_zero_validation_split_means_no_validation():
    training = job_spec(MODEL, validation_split=0.0).training
    assert training.HasField("validation_split") and training.validation_split == 0.0


def test_dataset_is_an_id_or_a_builtin_name():
    assert job_spec(MODEL, dataset="cd" * 32).dataset.artifact_id == "cd" * 32
    assert job_spec(MODEL).dataset.builtin == "mnist"


@pytest.mark.parametrize("name", ["saved_model", "saved_model.zip", "SAVED_MODEL", "EXPORT_FORMAT_SAVED_MODEL"])
def test_export_format_names(name):
    assert export_format(name) == pb.EXPORT_FORMAT_SAVED_MODEL


def test_result_renders_as_an_escaped_html_table():
    raw = pb.PruneResult(
        baseline=pb.Metrics(accuracy=0.98, loss=0.07),
        pruned=pb.Metrics(accuracy=0.97, loss=0.09),
        accuracy_delta=-0.01,
        overall_sparsity=0.79,
        pruned_kernel_sparsity=0.8,
        total_params=1000,
        nonzero_params=210,
        size_before=pb.SizeStats(raw_bytes=98765, gzip_bytes=90000),
        size_after=pb.SizeStats(raw_bytes=98765, gzip_bytes=30000),
        compression_ratio=3.0,
        device="CPU & <GPU>",
        layers=[
            pb.LayerSparsity(
                name="<script>alert(1)</script>", type="Dense", pruned=True, weights=800, nonzero=160, sparsity=0.8
            )
        ],
    )
    page = PruneResult.from_proto(raw)._repr_html_()
    assert page.count("<table>") == 3
    assert "<td>test accuracy</td><td>0.9800</td><td>0.9700</td>" in page
    assert "<td>98,765</td><td>98,765</td>" in page and "<td>90,000</td><td>30,000</td>" in page
    assert "<td>0.8000</td>" in page and "3.00x" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "CPU &amp; &lt;GPU&gt;" in page


def test_structured_spec_builder():
    from pruning_client import IMPORTANCE_CRITERIA, structured

    assert set(IMPORTANCE_CRITERIA) == {"l1", "l2", "bn_scale", "taylor"}
    s = structured(0.5, layer_ratios={"conv": 0.25}, round_to=8, importance="Taylor")
    assert (s.ratio, dict(s.layer_ratios), s.round_to, s.importance) == (
        0.5,
        {"conv": 0.25},
        8,
        pb.IMPORTANCE_CRITERION_TAYLOR,
    )
    assert s.min_channels == 0 and s.latency_repeats == 0  # left to the server
    with pytest.raises(ValueError, match="importance"):
        structured(0.5, importance="random")
    only = job_spec("ab" * 32, structured=s)
    assert only.pruning.HasField("structured") and not only.pruning.HasField("schedule")
    both = job_spec("ab" * 32, schedule=constant_sparsity(0.5), structured=s)
    assert both.pruning.HasField("schedule")


def test_result_shows_structured_figures():
    raw = pb.PruneResult(
        structured=pb.StructuredResult(
            params_before=1000,
            params_after=400,
            groups=3,
            groups_pruned=2,
            criterion="l1",
            latency=[pb.Latency(runtime="tflite", batch_size=64, before_ms=4.0, after_ms=2.0, repeats=5)],
            left_whole=[pb.LayerLeftWhole(name="logits", reason="reaches the model output 'logits'")],
        )
    )
    result = PruneResult.from_proto(raw)
    rows = dict(result.structured_lines())
    assert rows["parameters"] == "1,000 -> 400"
    assert "2.00x" in rows["latency tflite batch 64"]
    assert "logits" in rows["left whole: logits"]
    assert result.to_dict()["structured"]["params_after"] == 400  # a number, as in the table
    assert PruneResult.from_proto(pb.PruneResult()).structured is None


def test_result_json_carries_what_the_table_shows():
    """`pruning result --json` is the table's result as JSON: latency, the recipe, the
    history and the phase timings included (they were left out)."""
    import json

    raw = pb.PruneResult(
        recipe=pb.RecipeResult(name="keep_accuracy", schedule_end_step=420, schedule_frequency=42),
        history=[pb.EpochSummary(epoch=1, loss=0.3), pb.EpochSummary(epoch=2, loss=0.2)],
        latency=[pb.Latency(runtime="tf", batch_size=1, before_ms=0.5, after_ms=0.5, repeats=10, within_noise=True)],
        phase_seconds={"load": 0.01, "fine_tune": 6.3},
        total_params=20410,
    )
    data = json.loads(json.dumps(PruneResult.from_proto(raw).to_dict()))
    assert data["recipe"]["name"] == "keep_accuracy" and data["recipe"]["schedule_end_step"] == 420
    assert [e["epoch"] for e in data["history"]] == [1, 2]
    assert data["latency"][0]["within_noise"] is True and data["latency"][0]["repeats"] == 10
    assert data["latency"][0]["calls_per_run"] == 0  # at its default, still there
    assert data["phase_seconds"] == {"load": 0.01, "fine_tune": 6.3}
    assert data["total_params"] == 20410
    assert "structured" not in data


def _submit_spec(*args: str) -> pb.JobSpec:
    """The spec `pruning submit ARGS` would send (a model id, so nothing is uploaded)."""
    import inspect

    import click

    from pruning_client.cli import _spec, cli

    with click.Context(cli) as parent:
        command = cli.get_command(parent, "submit")
        assert command is not None
        ctx = command.make_context("submit", ["--model", "ab" * 32, *args], parent=parent)
    wanted = inspect.signature(_spec).parameters
    return _spec(None, **{k: v for k, v in ctx.params.items() if k in wanted})  # type: ignore[arg-type]


def test_cli_structured_flags():
    spec = _submit_spec(
        "--schedule", "none", "--structured-ratio", "0.5", "--layer-ratio", "conv=0.25", "--importance", "taylor"
    )
    s = spec.pruning.structured
    assert not spec.pruning.HasField("schedule")
    assert (s.ratio, dict(s.layer_ratios), s.importance) == (0.5, {"conv": 0.25}, pb.IMPORTANCE_CRITERION_TAYLOR)
    assert not _submit_spec().pruning.HasField("structured")
    both = _submit_spec("--structured-ratio", "0.25", "--round-to", "8")
    assert both.pruning.HasField("schedule") and both.pruning.structured.round_to == 8
    with pytest.raises(click.BadParameter):
        _submit_spec("--layer-ratio", "conv")


def test_cli_output_losses():
    spec = _submit_spec("--loss", "sparse_categorical_crossentropy", "--output-loss", "box=mean_squared_error")
    assert spec.training.loss == "sparse_categorical_crossentropy"
    assert dict(spec.training.output_losses) == {"box": "mean_squared_error"}
    assert not _submit_spec().training.output_losses
    for bad in ("box", "=mean_squared_error", "box="):
        with pytest.raises(click.BadParameter, match="expected NAME=LOSS"):
            _submit_spec("--output-loss", bad)
    sdk = job_spec("ab" * 32, output_losses={"box": "mean_absolute_error"})
    assert dict(sdk.training.output_losses) == {"box": "mean_absolute_error"}
