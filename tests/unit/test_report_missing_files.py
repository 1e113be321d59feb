"""``pruning report`` of a job whose report file the server no longer holds (deleted with
``pruning delete``, or past the artifact retention): the report is written without it and
says so; any other error still fails the command."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, NotFound, Unavailable
from pruning_client import cli as cli_module
from pruning_client.cli import run
from pruning_client.report import job_report

JOB = "0123456789abcdef01234567"
GONE = "0fb38dd4" + "0" * 56


def _job() -> pb.Job:
    job = pb.Job(id=JOB, state=pb.JOB_STATE_SUCCEEDED)
    job.result.artifacts.add(id="a" * 64, format="keras", filename="pruned_0.keras")
    job.result.artifacts.add(id="b" * 64, format="history_png", filename="report.history.png")
    job.result.artifacts.add(id=GONE, format="layers_png", filename="report.layers.png")
    job.result.artifacts.add(id="c" * 64, format="tensorboard", filename="tensorboard.zip")
    return job


class FakeClient(Client):
    """A client that never connects: the job above, and downloads that write a file, but for
    ``GONE`` (deleted, or past its retention) that raises ``error``."""

    error: Exception = NotFound(f"NOT_FOUND: artifact_id: no artifact {GONE}")

    def __init__(self, target: str = "127.0.0.1:1", **options: Any) -> None:
        super().__init__(target, **options)

    def get_job(self, job_id: str, **kwargs: Any) -> pb.Job:
        return _job()

    def download(self, artifact_id: str, dest: os.PathLike[str] | str, **kwargs: Any) -> pathlib.Path:
        if artifact_id == GONE:
            raise self.error
        path = pathlib.Path(dest)
        path.write_bytes(b"png")
        return path


def test_the_report_names_a_missing_file() -> None:
    markdown, page = job_report(_job(), {"history_png": "h.png"}, missing=["report.layers.png"])
    assert "## Missing files" in markdown and "report.layers.png" in markdown
    assert "deleted, or past the artifact retention" in markdown and "report.layers.png" in page
    assert "![training](h.png)" in markdown and "## Plots" not in markdown  # the job stored plots
    assert "## Missing files" not in job_report(_job(), {"history_png": "h.png"})[0]


def test_pruning_report_goes_without_a_deleted_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_module, "Client", FakeClient)
    assert run(["report", JOB, "-o", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    written = json.loads(out)
    assert set(written) == {"history_png", "tensorboard", "report_md", "report_html"}
    markdown = (tmp_path / "report.md").read_text()
    assert "report.layers.png" in markdown and "deleted, or past the artifact retention" in markdown
    assert f"![training]({JOB}-report.history.png)" in markdown and "## TensorBoard" in markdown
    assert "report.layers.png" in (tmp_path / "report.html").read_text()
    assert not (tmp_path / f"{JOB}-report.layers.png").exists()
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: report.layers.png is no longer stored (deleted, or past the artifact retention): "
        "the report goes without it"
    ]


def test_pruning_report_still_fails_on_other_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeClient, "error", Unavailable("UNAVAILABLE: connection refused"))
    monkeypatch.setattr(cli_module, "Client", FakeClient)
    assert run(["report", JOB, "-o", str(tmp_path)]) == Unavailable.exit_code
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()
