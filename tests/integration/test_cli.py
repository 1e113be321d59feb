"""The `pruning` CLI end to end: JSON output and exit codes a pipeline can rely on."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
PRUNING = pathlib.Path(sys.executable).parent / "pruning"


def cli(server, *args, timeout=300):
    return subprocess.run([str(PRUNING), *args, "--target", server.target, "--json"],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "PRUNING_API_KEY": ""})


def test_submit_wait_download(server, worker, files, tmp_path):
    out = cli(server, "submit", "--model", str(files["keras"]), "--dataset", str(files["data"]),
              "--schedule", "constant", "--final-sparsity", "0.6", "--frequency", "5", "--epochs", "1",
              "--batch-size", "64", "--label", "via=cli", "--wait", "--download", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["state"] == "SUCCEEDED"
    assert data["result"]["pruned_kernel_sparsity"] == pytest.approx(0.6, abs=0.02)
    assert pathlib.Path(data["downloaded"]).exists()

    listed = json.loads(cli(server, "list", "--label", "via=cli").stdout)
    assert [j["id"] for j in listed["jobs"]] == [data["job_id"]]
    status = json.loads(cli(server, "status", data["job_id"]).stdout)
    assert status["state"] == "JOB_STATE_SUCCEEDED"
    events = [json.loads(line) for line in cli(server, "watch", data["job_id"]).stdout.splitlines()]
    assert events[-1]["state_change"]["to"] == "JOB_STATE_SUCCEEDED"
    result = json.loads(cli(server, "result", data["job_id"]).stdout)
    assert result["pruned_kernel_sparsity"] == data["result"]["pruned_kernel_sparsity"]
    fetched = json.loads(cli(server, "download", data["job_id"], "-o", str(tmp_path / "new" / "dir"), "--format", "keras").stdout)
    assert pathlib.Path(fetched["path"]).read_bytes() == pathlib.Path(data["downloaded"]).read_bytes()


def test_exit_codes(server, files):
    bad = cli(server, "submit", "--model", str(files["keras"]), "--final-sparsity", "1.5")
    assert bad.returncode == 2
    error = json.loads(bad.stdout)
    assert error["error"] == "InvalidArgument"
    assert ["spec.pruning.schedule.polynomial_decay.final_sparsity", "must be in [0, 1), got 1.5"] in error["field_violations"]
    assert cli(server, "status", "0" * 24).returncode == 3
    assert cli(server, "download", "0" * 64, "-o", "/tmp/nothing").returncode == 3


def test_human_output_has_progress_and_table(server, worker, files):
    out = subprocess.run(
        [str(PRUNING), "submit", "--target", server.target, "--model", str(files["keras"]), "--dataset", str(files["data"]),
         "--schedule", "constant", "--final-sparsity", "0.5", "--frequency", "5", "--epochs", "2", "--batch-size", "32",
         "--wait"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "step/s" in out.stderr or "step]" in out.stderr  # the live progress bar
    assert "SUCCEEDED" in out.stderr
    assert "test accuracy" in out.stdout and "layer" in out.stdout and "hidden" in out.stdout
