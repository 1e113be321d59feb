"""The SDK type-checks from a user's side: ``mypy --strict`` on a small script passes against
the source tree and against the installed package (py.typed, the generated stubs), and it
catches a type error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

pytest.importorskip("mypy")

GOOD = textwrap.dedent(
    """
    import asyncio
    import pathlib

    from pruning.v1 import pruning_pb2 as pb
    from pruning_client import Client, JobHandle, LayerSparsity, PruneResult, PruningError, job_spec, polynomial_decay
    from pruning_client.aio import AsyncClient, AsyncJobHandle


    def prune(target: str, model: pathlib.Path) -> tuple[float, list[str]]:
        with Client(target, timeout=30) as client:
            artifact: pb.Artifact = client.upload_model(model)
            spec = job_spec(artifact.id, schedule=polynomial_decay(0.5, 0.8), epochs=2, validation_split=0.0)
            job: JobHandle = client.submit(spec, labels={"team": "vision"})
            for event in job.watch():
                if event.WhichOneof("kind") == "progress":
                    print(event.progress.step, event.progress.total_steps)
            try:
                result: PruneResult = job.result(timeout=600)
            except PruningError as error:
                print(error.code, error.details, error.field_violations, error.rpc_error)
                raise
            layers: list[LayerSparsity] = result.layers
            job.download(pathlib.Path("out"), fmt="saved_model")
            paths: list[pathlib.Path] = job.download_all("out")
            done: bool = job.done()
            print(done, paths, result._repr_html_())
            # None under a regression loss (or without a baseline): a strict checker makes the
            # script say what then
            delta: float | None = result.accuracy_delta
            if delta is None and result.baseline_loss is not None:
                delta = result.baseline_loss - result.pruned_loss
            return delta or 0.0, [layer.name for layer in layers if layer.pruned]


    async def prune_async(target: str, model_id: str) -> float:
        async with AsyncClient(target) as client:
            job: AsyncJobHandle = await client.submit(job_spec(model_id))
            async for event in job.watch():
                print(event.id)
            async for record in client.list_jobs(states=[pb.JOB_STATE_SUCCEEDED]):
                print(record.id, pb.JobState.Name(record.state))
            final: pb.Job = await job.wait(timeout=60)
            result = await job.result()
            await job.download("out")
            return result.compression_ratio + final.attempt


    asyncio.run(prune_async("localhost:50051", "ab" * 32))
    """
)

BAD = textwrap.dedent(
    """
    from pruning_client import Client, job_spec

    with Client("localhost:50051") as client:
        job = client.submit(job_spec("ab" * 32, epochs="two"))
        accuracy: str = job.result().pruned_accuracy
    """
)


def mypy(directory, name: str, script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``script``, run where no project configuration applies."""
    (directory / f"{name}.py").write_text(script)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-executable",
            sys.executable,
            "--cache-dir",
            str(directory / f".mypy-cache-{name}"),
            "--no-error-summary",
            f"{name}.py",
        ],
        cwd=directory,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("typing")


def test_a_user_script_type_checks_strictly(workdir):
    out = mypy(workdir, "good", GOOD, {"MYPYPATH": str(ROOT / "client")})
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_type_error_is_caught(workdir):
    out = mypy(workdir, "bad", BAD, {"MYPYPATH": str(ROOT / "client")})
    assert out.returncode == 1, out.stdout + out.stderr
    assert 'Argument "epochs" to "job_spec" has incompatible type "str"' in out.stdout
    assert (
        'Incompatible types in assignment (expression has type "float | None", variable has type "str")' in out.stdout
    )


def test_the_installed_package_is_typed(workdir):
    """Installed (not from the source tree), the package is typed through its py.typed markers
    and the generated stubs; without them mypy would refuse it (import-untyped)."""
    source, site = workdir / "client", workdir / "site"  # a copy, so the build leaves nothing in the tree
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert (site / "pruning_client" / "py.typed").exists() and (site / "pruning" / "py.typed").exists()
    assert (site / "pruning" / "v1" / "pruning_pb2_grpc.pyi").exists()
    out = mypy(workdir, "installed", GOOD, {"PYTHONPATH": str(site), "MYPYPATH": ""})
    assert out.returncode == 0, out.stdout + out.stderr
