"""The `pruning` CLI end to end: JSON output and exit codes a pipeline can rely on, progress
on a terminal and in pipes, broken pipes, missing files, export formats."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import pty
import re
import struct
import subprocess
import sys
import termios
import zipfile
from typing import Any

import pytest

pytestmark = pytest.mark.integration
PRUNING = pathlib.Path(sys.executable).parent / "pruning"
ENV = {**os.environ, "PRUNING_API_KEY": "", "PRUNING_TARGET": ""}


def pruning(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the CLI with stdout and stderr piped (no terminal)."""
    return subprocess.run([str(PRUNING), *args], capture_output=True, text=True, timeout=timeout, env=env or ENV)


def cli(server: Any, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI with the global options after the command."""
    return pruning(*args, "--target", server.target, "--json", timeout=timeout)


@pytest.fixture(scope="module")
def human_job(
    server: Any, worker: Any, files: dict[str, pathlib.Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One job through the human-readable CLI, piped: keras and saved_model exports, both
    downloaded by `submit --wait --download`."""
    downloads = tmp_path_factory.mktemp("cli-downloads")
    out = pruning(
        "submit",
        "--target",
        server.target,
        "--model",
        str(files["keras"]),
        "--dataset",
        str(files["data"]),
        "--schedule",
        "constant",
        "--final-sparsity",
        "0.5",
        "--frequency",
        "5",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--export",
        "keras",
        "--export",
        "saved_model",
        "--label",
        "via=cli-human",
        "--wait",
        "--download",
        str(downloads),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    match = re.search(r"job (\S+) submitted", out.stderr)
    assert match, out.stderr[-3000:]
    return {"id": match.group(1), "out": out, "downloads": downloads}


def test_submit_wait_download(server: Any, worker: Any, files: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    out = cli(
        server,
        "submit",
        "--model",
        str(files["keras"]),
        "--dataset",
        str(files["data"]),
        "--schedule",
        "constant",
        "--final-sparsity",
        "0.6",
        "--frequency",
        "5",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--no-report",
        "--label",
        "via=cli",
        "--wait",
        "--download",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["state"] == "JOB_STATE_SUCCEEDED"  # as status, list and watch write it
    assert data["result"]["pruned_kernel_sparsity"] == pytest.approx(0.6, abs=0.02)
    assert pathlib.Path(data["downloaded"]).exists()
    assert data["downloads"] == [data["downloaded"]]
    assert pathlib.Path(data["downloaded"]).name == f"pruned-{data['job_id']}.keras"
    assert not list(tmp_path.glob("*.part"))

    listed = json.loads(cli(server, "list", "--label", "via=cli").stdout)
    assert [j["id"] for j in listed["jobs"]] == [data["job_id"]] and listed["truncated"] is False
    status = json.loads(cli(server, "status", data["job_id"]).stdout)
    assert status["state"] == "JOB_STATE_SUCCEEDED"
    events = [json.loads(line) for line in cli(server, "watch", data["job_id"]).stdout.splitlines()]
    assert events[-1]["state_change"]["to"] == "JOB_STATE_SUCCEEDED"
    result = json.loads(cli(server, "result", data["job_id"]).stdout)
    assert result["pruned_kernel_sparsity"] == data["result"]["pruned_kernel_sparsity"]
    fetched = json.loads(
        cli(
            server, "download", data["job_id"], "-o", str(tmp_path / "new" / "dir" / "model.keras"), "--format", "keras"
        ).stdout
    )
    assert fetched["path"] == str(tmp_path / "new" / "dir" / "model.keras")
    assert pathlib.Path(fetched["path"]).read_bytes() == pathlib.Path(data["downloaded"]).read_bytes()
    artifact_id = data["result"]["model_artifact_id"]
    by_id = json.loads(cli(server, "download", artifact_id, "-o", str(tmp_path / "by-id") + "/").stdout)
    assert by_id["path"] == str(tmp_path / "by-id" / f"{artifact_id}.keras")  # an export: its id and suffix
    assert pathlib.Path(by_id["path"]).read_bytes() == pathlib.Path(data["downloaded"]).read_bytes()


def test_exit_codes(server: Any, files: dict[str, pathlib.Path]) -> None:
    bad = cli(server, "submit", "--model", str(files["keras"]), "--final-sparsity", "1.5")
    assert bad.returncode == 2
    error = json.loads(bad.stdout)
    assert error["error"] == "InvalidArgument"
    assert ["spec.pruning.schedule.polynomial_decay.final_sparsity", "must be in [0, 1), got 1.5"] in error[
        "field_violations"
    ]
    # the step's log (stderr) says why too: a pipeline reads stdout with a parser
    assert bad.stderr.startswith("error: INVALID_ARGUMENT: spec.pruning.schedule.polynomial_decay.final_sparsity")
    unknown = cli(server, "status", "0" * 24)
    assert unknown.returncode == 3 and unknown.stderr.startswith("error: NOT_FOUND")
    assert cli(server, "status", "0" * 24).returncode == 3
    assert cli(server, "download", "0" * 64, "-o", "/tmp/nothing").returncode == 3


def test_a_command_that_finds_nothing_makes_no_folders(server: Any, tmp_path: pathlib.Path) -> None:
    """A download or report of an unknown id (NOT_FOUND) leaves no directory it made for it;
    one that existed before stays."""
    for args in (
        ("download", "f" * 64, "-o", str(tmp_path / "a" / "b" / "c.keras")),
        ("download", "f" * 64, "-o", str(tmp_path / "d" / "e") + "/"),
        ("report", "0123456789abcdef01234567", "-o", str(tmp_path / "r" / "s")),
    ):
        assert cli(server, *args).returncode == 3, args
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    assert cli(server, "report", "0123456789abcdef01234567", "-o", str(tmp_path / "kept" / "new")).returncode == 3
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


@pytest.mark.parametrize(
    "args",
    [
        ("upload", "model", "nope.keras"),
        ("upload", "dataset", "nope.npz"),
        ("submit", "--model", "nope.keras"),
        ("submit", "--model", "nope.keras", "--wait"),
    ],
)
def test_a_missing_file_is_exit_2_and_one_line(server: Any, args: tuple[str, ...]) -> None:
    out = pruning(*args, "--target", server.target)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "nope." in out.stderr and "UNKNOWN" not in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_human_output_in_a_pipe_has_progress_lines_and_no_carriage_return(human_job: dict[str, Any]) -> None:
    out = human_job["out"]
    assert "\r" not in out.stdout and "\r" not in out.stderr
    assert re.search(r"fine-tune step \d+/\d+ \(\d+%\) epoch \d/2", out.stderr), out.stderr[-2000:]
    assert "SUCCEEDED" in out.stderr
    assert "test accuracy" in out.stdout and "layer" in out.stdout and "hidden" in out.stdout
    downloads = human_job["downloads"]
    assert sorted(p.name for p in downloads.iterdir()) == [
        f"pruned-{human_job['id']}.keras",
        f"pruned-{human_job['id']}.saved_model.zip",
    ]
    assert f"pruned model (saved_model): {downloads}/pruned-{human_job['id']}.saved_model.zip" in out.stdout


def test_watch_in_a_pipe_has_no_carriage_return(server: Any, human_job: dict[str, Any]) -> None:
    out = subprocess.run(
        [str(PRUNING), "watch", human_job["id"], "--target", server.target],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )  # stdout and stderr: pipes
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stdout and "\r" not in out.stderr
    assert "fine-tune step" in out.stderr and "test accuracy" in out.stdout


def test_progress_bar_on_a_terminal(server: Any, human_job: dict[str, Any]) -> None:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [str(PRUNING), "watch", human_job["id"], "--target", server.target],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=ENV,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    assert proc.wait(60) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "\r" in shown and "step" in shown and "epoch 2/2" in shown  # tqdm's live bar
    assert "fine-tune step" not in shown  # not the plain lines
    assert "test accuracy" in stdout


@pytest.mark.parametrize("fmt", ["saved_model", "saved_model.zip"])
def test_download_saved_model_by_either_name(
    server: Any, human_job: dict[str, Any], tmp_path: pathlib.Path, fmt: str
) -> None:
    out = cli(server, "download", human_job["id"], "--format", fmt, "-o", str(tmp_path) + "/")
    assert out.returncode == 0, out.stderr[-2000:]
    path = pathlib.Path(json.loads(out.stdout)["path"])
    assert path == tmp_path / f"pruned-{human_job['id']}.saved_model.zip"
    assert zipfile.is_zipfile(path)
    assert "saved_model.pb" in zipfile.ZipFile(path).namelist()
    assert path.read_bytes() == (human_job["downloads"] / path.name).read_bytes()


def test_download_all(server: Any, human_job: dict[str, Any], tmp_path: pathlib.Path) -> None:
    out = cli(server, "download", human_job["id"], "--all", "-o", str(tmp_path / "all"))
    assert out.returncode == 0, out.stderr[-2000:]
    paths = [pathlib.Path(p) for p in json.loads(out.stdout)["paths"]]
    assert [p.name for p in paths] == [f"pruned-{human_job['id']}.keras", f"pruned-{human_job['id']}.saved_model.zip"]
    for path in paths:
        assert path.read_bytes() == (human_job["downloads"] / path.name).read_bytes()
    missing = cli(server, "download", human_job["id"], "--format", "tflite")
    assert missing.returncode == 3
    assert "no tflite export" in json.loads(missing.stdout)["message"]


def test_global_options_before_the_command(server: Any, human_job: dict[str, Any]) -> None:
    out = pruning("--target", server.target, "--json", "status", human_job["id"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "JOB_STATE_SUCCEEDED"
    listed = pruning("list", "--label", "via=cli-human", "--json", env={**ENV, "PRUNING_TARGET": server.target})
    assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [human_job["id"]]
    wrong = pruning("--target", "127.0.0.1:1", "status", human_job["id"], "--target", server.target, "--json")
    assert wrong.returncode == 0, wrong.stderr  # the one after the command wins


def test_watch_json_into_head_exits_0_without_a_traceback(
    server: Any, worker: Any, files: dict[str, pathlib.Path]
) -> None:
    submitted = cli(
        server,
        "submit",
        "--model",
        str(files["keras"]),
        "--dataset",
        str(files["data"]),
        "--schedule",
        "constant",
        "--final-sparsity",
        "0.5",
        "--frequency",
        "5",
        "--epochs",
        "3",  # still running when the watch starts: its pipe closes under a live stream
        "--batch-size",
        "16",
        "--no-report",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    out = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{PRUNING}" watch {job_id} --json --target {server.target} | head -1'],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert json.loads(out.stdout)["job_id"] == job_id
    assert cli(server, "result", job_id).returncode == 0  # the job itself is unharmed


def test_version() -> None:
    out = pruning("--version")
    assert out.returncode == 0
    assert re.fullmatch(r"pruning \d+\.\d+\.\d+\S*\n", out.stdout)
