"""The SDK and CLI on every Python they claim (``requires-python = ">=3.10"``): installed from
``client/`` into a fresh virtual environment of each interpreter found on this machine, they
run a job against the real server and worker (sync client, asyncio client and CLI)."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]

SMOKE = r"""
import asyncio, hashlib, json, pathlib, sys
from pruning_client import Client, constant_sparsity, job_spec
from pruning_client.aio import AsyncClient

target, model_path, data_path, out = sys.argv[1:5]
out = pathlib.Path(out)
with Client(target, timeout=30) as client:
    model = client.upload_model(model_path)
    data = client.upload_dataset(data_path)
    spec = job_spec(model.id, dataset=data.id, epochs=1, schedule=constant_sparsity(0.5, frequency=5), report=False)
    job = client.submit(spec, labels={"python": sys.version.split()[0]})
    result = job.result(timeout=300)
    path = job.download(out / "sync")


async def main():
    async with AsyncClient(target, timeout=30) as aio:
        await aio.wait_ready(10)
        again = await aio.upload_model(model_path)  # the same bytes: the same artifact
        states = [e.state_change.to async for e in aio.watch_events(job.id) if e.WhichOneof("kind") == "state_change"]
        apath = await aio.job(job.id).download(out / "aio")
        return again.id, states, str(apath)


again, states, apath = asyncio.run(main())
print(json.dumps({
    "python": sys.version.split()[0],
    "job": job.id,
    "sparsity": result.pruned_kernel_sparsity,
    "same_model": again == model.id,
    "states": states,
    "sync_sha": hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest(),
    "aio_sha": hashlib.sha256(pathlib.Path(apath).read_bytes()).hexdigest(),
}))
"""


def _minimum() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]["requires-python"]
    major, minor = spec.removeprefix(">=").split(".")[:2]
    return int(major), int(minor)


def _interpreters() -> dict[str, str]:
    """minor version -> an interpreter of it that runs, other than this one."""
    low = _minimum()[1]
    found: dict[str, str] = {}
    for minor in range(low, 15):
        if minor == sys.version_info.minor:
            continue  # the whole suite runs on this one
        candidates = [shutil.which(f"python3.{minor}")]
        candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3")))
        for candidate in filter(None, candidates):
            run = subprocess.run([candidate, "-c", "import venv"], capture_output=True)
            if run.returncode == 0:
                found[f"3.{minor}"] = candidate
                break
    return found


INTERPRETERS = _interpreters()


@pytest.mark.parametrize("version", sorted(INTERPRETERS) or ["none"])
def test_sdk_and_cli_run_a_job_on_another_python(version, server, worker, files, tmp_path):
    if version == "none":
        pytest.skip("no other Python on this machine")
    venv = tmp_path / "venv"
    subprocess.run([INTERPRETERS[version], "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-compile",
            "--disable-pip-version-check",
            str(ROOT / "client"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]

    run = subprocess.run(
        [str(python), "-c", SMOKE, server.target, str(files["keras"]), str(files["data"]), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["python"].startswith(version + ".")
    assert seen["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert seen["same_model"]
    assert seen["states"][0] == 1 and seen["states"][-1] == 4  # QUEUED ... SUCCEEDED
    assert seen["sync_sha"] == seen["aio_sha"]

    cli = subprocess.run(
        [str(venv / "bin" / "pruning"), "--target", server.target, "--json", "status", seen["job"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["state"] == "JOB_STATE_SUCCEEDED"
