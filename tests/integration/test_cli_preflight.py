"""Preflight from the `pruning` CLI and the SDK against the real server: `pruning inspect`
prints the summary the service read from a model (or its refusal, naming the layer),
`pruning submit --dry-run` prints the plan and creates no job, and `Client.validate` /
`AsyncClient.validate` answer with the typed plan."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest

from pruning_client import InvalidArgument, JobPlan, ModelSummary, job_spec, polynomial_decay
from pruning_client.aio import AsyncClient

pytestmark = pytest.mark.integration
PRUNING = pathlib.Path(sys.executable).parent / "pruning"
ENV = {**os.environ, "PRUNING_API_KEY": "", "PRUNING_TARGET": ""}
# The test model (tests/models.py small_model): Reshape -> Conv2D 4 -> Flatten -> Dense 32 -> Dense 4.
PARAMS = {"conv": 3 * 3 * 1 * 4 + 4, "hidden": 6 * 6 * 4 * 32 + 32, "logits": 32 * 4 + 4}


def pruning(server: Any, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI, piped, against the test server."""
    return subprocess.run(
        [str(PRUNING), *args, "--target", server.target], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def job_count(server: Any) -> int:
    out = pruning(server, "list", "--limit", "100000", "--json")
    assert out.returncode == 0, out.stderr
    return len(json.loads(out.stdout)["jobs"])


@pytest.fixture(scope="module")
def gaussian_noise_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A Keras 3 model (saved by `import keras`) with an RMSNormalization layer, which the service
    cannot translate to tf_keras."""
    import keras3_models

    keras = keras3_models.keras
    model = keras.Sequential(
        [
            keras.layers.InputLayer(shape=(8, 8)),
            keras.layers.Flatten(name="flat"),
            keras.layers.RMSNormalization(name="jitter"),
            keras.layers.Dense(4, name="logits"),
        ]
    )
    path = tmp_path_factory.mktemp("keras3") / "noisy.keras"
    keras.saving.save_model(model, path)
    return path


@pytest.fixture(scope="module")
def keras3_cnn(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    import keras3_models

    return keras3_models.mnist_cnn(tmp_path_factory.mktemp("keras3") / "cnn.keras")


def dry_run_args(files: dict[str, pathlib.Path], *extra: str) -> list[str]:
    return [
        "submit",
        "--model",
        str(files["keras"]),
        "--dataset",
        str(files["data"]),
        "--final-sparsity",
        "0.75",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--dry-run",
        *extra,
    ]


# -- pruning inspect ---------------------------------------------------------------------------


def test_inspect_prints_the_layers_and_params(server: Any, files: dict[str, pathlib.Path]) -> None:
    out = pruning(server, "inspect", str(files["keras"]))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    text = out.stdout
    assert "keras version: 2 (tf_keras)" in text
    assert "(None, 8, 8)" in text and "(None, 4)" in text  # the input, the logits
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()}
    assert rows["layer"] == ["layer", "class", "params", "prunable", "convertible"]
    for name, params in PARAMS.items():
        assert rows[name][2] == f"{params:,}", rows[name]
    assert rows["logits"][1:] == ["Dense", "132", "yes", "yes"]
    assert rows["flatten"][2:4] == ["0", "no"]
    total = sum(PARAMS.values())
    assert f"total params: {total:,} ({total:,} in prunable layers)" in text


def test_inspect_json(server: Any, files: dict[str, pathlib.Path]) -> None:
    out = pruning(server, "inspect", str(files["keras"]), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert int(layers["logits"]["params"]) == 132 and layers["logits"]["class_name"] == "Dense"
    assert layers["logits"]["prunable"] is True and layers["flatten"]["prunable"] is False
    assert data["keras_version"] == 2 and int(data["total_params"]) == sum(PARAMS.values())
    assert [[int(d) for d in t["shape"]] for t in data["inputs"]] == [[8, 8]]
    assert len(data["artifact_id"]) == 64
    again = pruning(server, "inspect", str(files["keras"]), "--json")  # content-addressed: the same artifact
    assert json.loads(again.stdout) == data


def test_inspect_a_keras3_model(server: Any, keras3_cnn: pathlib.Path) -> None:
    out = pruning(server, "inspect", str(keras3_cnn))
    assert out.returncode == 0, out.stderr
    assert "keras version: 3, saved by Keras 3." in out.stdout
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.split()}
    convertible = [row[-1] for name, row in rows.items() if name not in ("layer", "keras", "input:", "output:")]
    assert rows["layer"][-1] == "convertible" and "yes" in convertible


def test_inspect_a_model_the_service_refuses(server: Any, gaussian_noise_model: pathlib.Path) -> None:
    out = pruning(server, "inspect", str(gaussian_noise_model))
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "'jitter' (RMSNormalization)" in out.stderr and "Traceback" not in out.stderr


def test_inspect_a_missing_file(server: Any) -> None:
    out = pruning(server, "inspect", "nope.keras")
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "nope.keras" in out.stderr


# -- pruning submit --dry-run ------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_creates_no_job(server: Any, files: dict[str, pathlib.Path]) -> None:
    before = job_count(server)
    out = pruning(server, *dry_run_args(files))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    train = int(1024 * 0.9)
    steps = -(-train // 64)
    assert "nothing was submitted" in text
    assert f"{train:,} train, {1024 - train:,} validation, 256 test" in text
    assert f"{steps:,} per epoch, {2 * steps:,} in all" in text
    ramp = re.search(r"steps 0 to ([\d,]+)", text)
    assert ramp and 0 < int(ramp.group(1).replace(",", "")) < 2 * steps  # the recipe ends the ramp early
    assert "keras version:    2" in text and "heuristic" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()}
    # The params column is the plan's, whatever it counts (see test_dry_run_json for the match).
    # The recipe keeps the small layers at 0.5 and the large one makes up for them.
    assert rows["logits"][:2] == ["logits", "Dense"] and rows["logits"][3] == "0.5000"
    assert float(rows["hidden"][3]) > 0.75
    assert rows["layer"] == ["layer", "class", "params", "final", "sparsity"]
    assert {"conv", "hidden", "logits"} <= rows.keys() and "flatten" not in rows
    assert job_count(server) == before


def test_dry_run_json(server: Any, files: dict[str, pathlib.Path]) -> None:
    before = job_count(server)
    out = pruning(server, *dry_run_args(files, "--keras-version", "3", "--include-layer", "hidden"), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["dry_run"] is True
    plan = data["plan"]
    assert [layer["name"] for layer in plan["layers"]] == ["hidden"]
    text = pruning(server, *dry_run_args(files, "--keras-version", "3", "--include-layer", "hidden")).stdout
    weights = next(line.split()[2] for line in text.splitlines() if line.startswith("hidden"))
    assert weights == f"{int(plan['layers'][0]['weights']):,}"
    assert "keras version:    2 (exports: 3)" in text
    assert plan["spec"]["export"]["keras_version"] == "KERAS_VERSION_3"
    assert int(plan["total_steps"]) == 2 * int(plan["steps_per_epoch"]) > 0
    assert job_count(server) == before


def test_dry_run_with_an_unknown_layer_exits_2_naming_the_field(server: Any, files: dict[str, pathlib.Path]) -> None:
    before = job_count(server)
    out = pruning(server, *dry_run_args(files, "--include-layer", "nope"))
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert "spec.pruning.layers.include_names" in out.stderr and "nope" in out.stderr
    assert "Traceback" not in out.stderr
    as_json = pruning(server, *dry_run_args(files, "--include-layer", "nope"), "--json")
    assert as_json.returncode == 2
    error = json.loads(as_json.stdout)
    assert error["error"] == "InvalidArgument"
    assert "spec.pruning.layers.include_names" in [field for field, _ in error["field_violations"]]
    assert job_count(server) == before


def test_dry_run_excludes_wait(server: Any, files: dict[str, pathlib.Path]) -> None:
    out = pruning(server, *dry_run_args(files, "--wait"))
    assert out.returncode == 2 and "--dry-run" in out.stderr


# -- SDK ---------------------------------------------------------------------------------------


def test_client_validate(client: Any, files: dict[str, pathlib.Path]) -> None:
    artifact = client.upload_model(files["keras"])
    summary = ModelSummary.from_proto(artifact.model)
    assert {layer.name: layer.params for layer in summary.layers if layer.params} == PARAMS
    data = client.upload_dataset(files["data"]).id
    before = len(list(client.list_jobs()))
    spec = job_spec(
        artifact.id, dataset=data, schedule=polynomial_decay(0.5, 0.8), epochs=1, batch_size=64, keras_version=3
    )
    plan = client.validate(spec)
    assert isinstance(plan, JobPlan)
    assert plan.keras_version == 2 and plan.export_keras_version == 3
    assert {layer.name for layer in plan.layers} == set(PARAMS)
    assert plan.total_steps == plan.steps_per_epoch > plan.schedule_end_step > 0  # the recipe's end step
    assert plan.spec.training.epochs == 1 and plan.raw.spec == plan.spec
    with pytest.raises(InvalidArgument) as error:
        client.validate(job_spec(artifact.id, dataset=data, include_layers=("nope",)))
    assert error.value.field_violations[0][0] == "spec.pruning.layers.include_names"
    assert len(list(client.list_jobs())) == before


def test_async_client_validate(server: Any, files: dict[str, pathlib.Path]) -> None:
    async def main() -> tuple[JobPlan, InvalidArgument]:
        async with AsyncClient(server.target) as client:
            model = await client.upload_model(files["keras"])
            data = (await client.upload_dataset(files["data"])).id
            spec = job_spec(model.id, dataset=data, epochs=1, batch_size=128, validation_split=0.0)
            plan = await client.validate(spec, labels={"team": "vision"})
            try:
                await client.validate(job_spec(model.id, dataset=data, exclude_layers=("nope",)))
            except InvalidArgument as error:
                return plan, error
            raise AssertionError("an unknown excluded layer was accepted")

    plan, error = asyncio.run(main())
    assert (plan.train_samples, plan.validation_samples, plan.test_samples) == (1024, 0, 256)
    assert plan.layers and plan.estimated_seconds > 0
    assert any(field == "spec.pruning.layers.exclude_names" for field, _ in error.field_violations)


def test_submit_says_the_plans_warnings(server: Any, files: dict[str, pathlib.Path]) -> None:
    """A job nobody follows would keep its plan's warnings to its events: submit says them."""
    args = [a for a in dry_run_args(files) if a != "--dry-run"]
    out = pruning(server, *args, "--loss", "sparse_categorical_crossentropy", "--json")
    assert out.returncode == 0, out.stderr
    submitted = json.loads(out.stdout)
    try:
        (warning,) = submitted["warnings"]
        assert "output 'logits' ends in no activation (logits), but its loss sparse_categorical_crossentropy" in warning
        assert f"warning: {warning}" in out.stderr
    finally:
        assert pruning(server, "cancel", submitted["job_id"]).returncode == 0
