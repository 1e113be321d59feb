"""Preflight in the SDK and CLI without a server: the typed model summary and job plan built
from their protos, the Keras version of exports in job_spec, the conversion figures of a
result, and how the CLI prints them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import (
    Client,
    InvalidArgument,
    JobPlan,
    LayerPlan,
    LayerSummary,
    ModelSummary,
    PruneResult,
    TensorSummary,
    job_spec,
)
from pruning_client.aio import AsyncClient
from pruning_client.cli import _report, format_plan, format_summary, format_table

MODEL = "ab" * 32


def summary_proto() -> pb.ModelSummary:
    return pb.ModelSummary(
        keras_version=3,
        keras_version_string="3.15.1",
        inputs=[pb.TensorSummary(name="image", shape=[28, 28], dtype="float32")],
        outputs=[pb.TensorSummary(name="logits", shape=[-1, 10], dtype="float32")],
        layers=[
            pb.LayerSummary(name="image", class_name="InputLayer", params=0, prunable=False, convertible=True),
            pb.LayerSummary(name="conv2d", class_name="Conv2D", params=120, prunable=True, convertible=True),
            pb.LayerSummary(name="noise", class_name="GaussianNoise", params=0, prunable=False, convertible=False),
            pb.LayerSummary(name="logits", class_name="Dense", params=20290, prunable=True, convertible=True),
        ],
        total_params=20410,
    )


def plan_proto(export_version: int = 0) -> pb.JobPlan:
    spec = job_spec(MODEL, epochs=2, batch_size=128, keras_version=export_version or None)
    return pb.JobPlan(
        layers=[
            pb.LayerPlan(name="conv2d", class_name="Conv2D", weights=108, final_sparsity=0.8),
            pb.LayerPlan(name="dense", class_name="Dense", weights=20280, final_sparsity=0.8),
        ],
        train_samples=54000,
        validation_samples=6000,
        test_samples=10000,
        steps_per_epoch=422,
        total_steps=844,
        schedule_begin_step=0,
        schedule_end_step=844,
        keras_version=2,
        estimated_seconds=42.5,
        estimate_basis="heuristic: a guess",
        spec=spec,
    )


def result_proto(version_in: int, version_out: int, diff: float = 0.0, export_diff: float = 0.0) -> pb.PruneResult:
    return pb.PruneResult(
        baseline=pb.Metrics(accuracy=0.98, loss=0.07),
        pruned=pb.Metrics(accuracy=0.97, loss=0.09),
        accuracy_delta=-0.01,
        total_params=1000,
        nonzero_params=210,
        compression_ratio=3.0,
        device="CPU",
        keras_version_in=version_in,
        keras_version_out=version_out,
        conversion_max_abs_diff=diff,
        export_conversion_max_abs_diff=export_diff,
        artifacts=[pb.Artifact(id="c" * 64, format="keras", filename="pruned.keras")],
    )


# -- ModelSummary ------------------------------------------------------------------------------


def test_model_summary_from_proto() -> None:
    summary = ModelSummary.from_proto(summary_proto())
    assert summary.keras_version == 3 and summary.keras_version_string == "3.15.1"
    assert summary.inputs == [TensorSummary("image", (28, 28), "float32")]
    assert summary.outputs[0].shape == (-1, 10) and summary.outputs[0].shape_text() == "(None, ?, 10)"
    assert summary.layers[1] == LayerSummary("conv2d", "Conv2D", 120, True, True)
    assert summary.total_params == 20410 and summary.prunable_params == 20410
    assert [layer.name for layer in summary.unconvertible] == ["noise"]
    assert summary.raw == summary_proto()
    assert "raw" not in repr(summary)


def test_model_summary_from_an_artifact_without_one() -> None:
    summary = ModelSummary.from_proto(pb.Artifact(id=MODEL).model)  # an older server: no summary
    assert summary.keras_version == 0 and summary.layers == [] and summary.total_params == 0


def test_model_summary_to_dict_is_json() -> None:
    data = ModelSummary.from_proto(summary_proto()).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["inputs"] == [{"name": "image", "shape": [28, 28], "dtype": "float32"}]
    assert data["layers"][2] == {
        "name": "noise",
        "class_name": "GaussianNoise",
        "params": 0,
        "prunable": False,
        "convertible": False,
        "left_whole": "",
    }


def test_model_summary_html_is_escaped() -> None:
    raw = summary_proto()
    raw.layers[1].name = "<b>conv</b>"
    page = ModelSummary.from_proto(raw)._repr_html_()
    assert page.count("<table>") == 3
    assert "<td>&lt;b&gt;conv&lt;/b&gt;</td><td>Conv2D</td><td>120</td><td>yes</td><td>yes</td>" in page
    assert "<td>3 (3.15.1)</td>" in page and "<td>20,410</td>" in page


def test_format_summary() -> None:
    text = format_summary(ModelSummary.from_proto(summary_proto()), "f" * 64)
    lines = text.splitlines()
    assert lines[0] == "artifact:      " + "f" * 64
    assert "keras version: 3, saved by Keras 3.15.1" in lines
    assert "input:         image  (None, 28, 28)  float32" in lines
    assert "output:        logits  (None, ?, 10)  float32" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.strip()}
    assert rows["layer"] == ["layer", "class", "params", "prunable", "convertible"]
    assert rows["logits"] == ["logits", "Dense", "20,290", "yes", "yes"]
    assert rows["noise"] == ["noise", "GaussianNoise", "0", "no", "no"]
    assert lines[-1] == "total params: 20,410 (20,410 in prunable layers)"
    assert "(tf_keras)" in format_summary(ModelSummary.from_proto(pb.ModelSummary(keras_version=2)))


# -- JobPlan -----------------------------------------------------------------------------------


def test_job_plan_from_proto() -> None:
    plan = JobPlan.from_proto(plan_proto())
    assert plan.layers == [
        LayerPlan("conv2d", "Conv2D", 108, pytest.approx(0.8)),
        LayerPlan("dense", "Dense", 20280, pytest.approx(0.8)),
    ]
    assert (plan.train_samples, plan.validation_samples, plan.test_samples) == (54000, 6000, 10000)
    assert (plan.steps_per_epoch, plan.total_steps) == (422, 844)
    assert (plan.schedule_begin_step, plan.schedule_end_step) == (0, 844)
    assert plan.keras_version == plan.export_keras_version == 2
    assert plan.estimated_seconds == 42.5 and plan.estimate_basis == "heuristic: a guess"
    assert plan.spec.training.epochs == 2 and plan.raw == plan_proto() and plan.pruned_weights == 20388
    assert JobPlan.from_proto(plan_proto(export_version=3)).export_keras_version == 3


def test_job_plan_to_dict_is_json() -> None:
    data = JobPlan.from_proto(plan_proto()).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["layers"][1] == {"name": "dense", "class_name": "Dense", "weights": 20280, "final_sparsity": 0.8}
    assert data["spec"]["model_id"] == MODEL and data["spec"]["training"]["epochs"] == 2
    assert "raw" not in data


def test_format_plan() -> None:
    text = format_plan(JobPlan.from_proto(plan_proto(export_version=3)))
    assert "nothing was submitted" in text.splitlines()[0]
    assert "samples:          54,000 train, 6,000 validation, 10,000 test" in text
    assert "steps:            422 per epoch, 844 in all" in text
    assert "pruning schedule: polynomial decay 0.5 -> 0.8, steps 0 to 844" in text
    assert "keras version:    2 (exports: 3)" in text
    assert "estimate:         42 s (heuristic: a guess)" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["dense"] == ["dense", "Dense", "20,280", "0.8000"]
    assert "no layers to prune" in format_plan(JobPlan.from_proto(pb.JobPlan(keras_version=2)))
    scanned = plan_proto()
    scanned.spec.pruning.sensitivity_scan = True  # the shares come from the worker's scan
    text = format_plan(JobPlan.from_proto(scanned))
    assert text.splitlines()[-2].split() == ["dense", "Dense", "20,280", "after", "the", "scan"]
    assert text.splitlines()[-1] == "the worker splits the target (0.8000) over these layers after the scan"
    assert "after the scan" in JobPlan.from_proto(scanned)._repr_html_()
    structured = plan_proto()
    structured.spec.pruning.structured.ratio = 0.5  # the recipe splits over the layers surgery leaves
    structured.spec.training.recipe = pb.RECIPE_KEEP_ACCURACY
    assert "after channel removal" in format_plan(JobPlan.from_proto(structured)).splitlines()[-1]
    structured.spec.training.recipe = pb.RECIPE_PLAIN  # the plain recipe: the plan's sparsities hold
    assert format_plan(JobPlan.from_proto(structured)).splitlines()[-1].split()[-1] == "0.8000"
    page = JobPlan.from_proto(plan_proto())._repr_html_()
    assert page.count("<table>") == 2 and "<td>20,280</td><td>0.8000</td>" in page


# -- job_spec ----------------------------------------------------------------------------------


def test_job_spec_keras_version() -> None:
    assert job_spec(MODEL).export.keras_version == pb.KERAS_VERSION_UNSPECIFIED
    assert job_spec(MODEL, keras_version=2).export.keras_version == pb.KERAS_VERSION_2
    spec = job_spec(MODEL, keras_version=3, exports=("h5",))
    assert spec.export.keras_version == pb.KERAS_VERSION_3 and list(spec.export.formats) == [pb.EXPORT_FORMAT_H5]
    with pytest.raises(ValueError, match="keras_version"):
        job_spec(MODEL, keras_version=4)


# -- PruneResult conversion figures ------------------------------------------------------------


def test_result_without_a_conversion() -> None:
    result = PruneResult.from_proto(result_proto(2, 2))
    assert (result.keras_version_in, result.keras_version_out) == (2, 2) and not result.converted
    assert result.conversion_lines() == []
    data = result.to_dict()
    assert data["keras_version_in"] == 2 and data["conversion_max_abs_diff"] == 0.0
    assert "keras version" not in format_table(result) and "conversion" not in format_table(result)
    assert "conversion" not in result._repr_html_()


def test_result_with_a_conversion() -> None:
    result = PruneResult.from_proto(result_proto(3, 3, diff=2.5e-7, export_diff=1.5e-6))
    assert result.converted
    assert result.conversion_max_abs_diff == pytest.approx(2.5e-7)
    assert result.export_conversion_max_abs_diff == pytest.approx(1.5e-6)
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert (data["keras_version_in"], data["keras_version_out"]) == (3, 3)
    assert data["export_conversion_max_abs_diff"] == pytest.approx(1.5e-6)
    table = format_table(result)
    assert "keras version: 3 in, 3 out" in table
    assert "conversion max |diff|: 2.5e-07" in table and "export conversion max |diff|: 1.5e-06" in table
    lines = table.splitlines()
    assert lines.index("keras version: 3 in, 3 out") < lines.index("") < len(lines) - 1  # before the layer table
    page = result._repr_html_()
    assert page.count("<table>") == 3 and "<td>3 in, 3 out</td>" in page
    # tf_keras in, Keras 3 out is a conversion too (on export), and only that one is shown
    on_export = PruneResult.from_proto(result_proto(2, 3, export_diff=1e-6))
    assert on_export.converted
    assert [label for label, _ in on_export.conversion_lines()] == ["keras version", "export conversion max |diff|"]
    # a diverged loss keeps its column apart (it ran into the baseline's)
    diverged = result_proto(3, 3)
    diverged.baseline.loss, diverged.pruned.loss = 0.3474302, 29242127548416.0
    row = next(line for line in format_table(PruneResult.from_proto(diverged)).splitlines() if "test loss" in line)
    assert row.split() == ["test", "loss", "0.3474", "2.924e+13"]


# -- validate() without a server ---------------------------------------------------------------


class FakeStub:
    """Answers CreateJob as the server does with validate_only; records the requests."""

    def __init__(self, error: grpc.RpcError | None = None) -> None:
        self.requests: list[pb.CreateJobRequest] = []
        self.error = error

    def CreateJob(self, request: pb.CreateJobRequest, **kwargs: Any) -> pb.Job:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return pb.Job(spec=request.spec, plan=plan_proto())


class AsyncFakeStub(FakeStub):
    async def CreateJob(self, request: pb.CreateJobRequest, **kwargs: Any) -> pb.Job:  # type: ignore[override]
        return super().CreateJob(request, **kwargs)


class InvalidSpec(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return "spec.training.epochs: must be >= 0"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_validate_sends_validate_only_and_returns_the_typed_plan() -> None:
    with Client("127.0.0.1:1") as client:
        stub = FakeStub()
        client.stub = stub  # type: ignore[assignment]
        plan = client.validate(job_spec(MODEL), labels={"team": "vision"})
    assert isinstance(plan, JobPlan) and plan.total_steps == 844
    (request,) = stub.requests
    assert request.validate_only and request.spec.model_id == MODEL and dict(request.labels) == {"team": "vision"}


def test_validate_maps_errors() -> None:
    with Client("127.0.0.1:1") as client:
        client.stub = FakeStub(InvalidSpec())  # type: ignore[assignment]
        with pytest.raises(InvalidArgument, match="epochs"):
            client.validate(job_spec(MODEL))


def test_async_validate() -> None:
    async def main() -> tuple[JobPlan, AsyncFakeStub]:
        async with AsyncClient("127.0.0.1:1") as client:
            stub = AsyncFakeStub()
            client.stub = stub  # type: ignore[assignment]
            return await client.validate(job_spec(MODEL)), stub

    plan, stub = asyncio.run(main())
    assert plan.steps_per_epoch == 422 and stub.requests[0].validate_only


# -- CLI errors --------------------------------------------------------------------------------


def _error(details: str, violations: list[tuple[str, str]]) -> InvalidArgument:
    return InvalidArgument(
        f"INVALID_ARGUMENT: {details}",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        details=details,
        field_violations=violations,
    )


def test_a_lone_violation_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    message = "the Keras 3 model has layers the service cannot translate: 'noise' (GaussianNoise)"
    _report(_error(f"model: {message}", [("model", message)]), json_output=False)
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: INVALID_ARGUMENT: model: {message}"]


def test_several_violations_are_listed_once(capsys: pytest.CaptureFixture[str]) -> None:
    violations = [("spec.pruning.layers.include_names", "no layer 'nope'"), ("spec.pruning.layers", "selects none")]
    _report(_error("; ".join(f"{f}: {d}" for f, d in violations), violations), json_output=False)
    assert capsys.readouterr().err.splitlines() == [
        "error: INVALID_ARGUMENT: 2 problems",
        "  spec.pruning.layers.include_names: no layer 'nope'",
        "  spec.pruning.layers: selects none",
    ]


def test_a_message_of_its_own_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    _report(_error("bad spec", [("spec.x", "wrong")]), json_output=False)
    assert capsys.readouterr().err.splitlines() == ["error: INVALID_ARGUMENT: bad spec", "  spec.x: wrong"]
    _report(_error("bad spec", [("spec.x", "wrong")]), json_output=True)
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "error": "InvalidArgument",
        "message": "INVALID_ARGUMENT: bad spec",
        "field_violations": [["spec.x", "wrong"]],
        "code": "INVALID_ARGUMENT",
    }


def test_a_structured_plan_says_structured_pruning_picks_the_channels() -> None:
    plan = pb.JobPlan(keras_version=2)
    plan.spec.pruning.structured.ratio = 0.5
    text = format_plan(JobPlan.from_proto(plan))
    assert "structured pruning picks the channels" in text and "no layers to prune\n" not in text + "\n"


def test_the_recipe_line_reads_right_for_every_kind_of_job() -> None:
    from pruning_client.results import recipe_text

    weights = pb.RecipeResult(
        name="keep_accuracy",
        schedule_end_step=420,
        schedule_frequency=42,
        learning_rate=0.002,
        learning_rate_decay=True,
        distillation=True,
        distillation_alpha=0.5,
        distillation_temperature=4,
        early_stopping_patience=2,
        epochs_run=2,
        best_epoch=2,
    )
    assert recipe_text(weights) == (
        "keep_accuracy, final sparsity at step 420 (masks every 42), learning rate 0.002 with cosine decay, "
        "distilled from the baseline (alpha 0.5, T 4), early stopping with a patience of 2 epochs; "
        "2 epochs run, weights of epoch 2 kept"
    )
    weights.schedule_begin_step = 100
    assert "keep_accuracy, from step 100, final sparsity at step 420" in recipe_text(weights)
    channels = pb.RecipeResult(name="keep_accuracy", learning_rate=0.002, epochs_run=2, best_epoch=1)
    text = recipe_text(channels)
    assert "no sparsity schedule (structured pruning only)" in text and "step 0" not in text
