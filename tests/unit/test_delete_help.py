"""`pruning delete --help` and the contract say what DeleteArtifact does with an artifact a job
still reads: it refuses (FAILED_PRECONDITION, exit 6); the job does not fail."""

from __future__ import annotations

import pathlib

import pytest

from pruning_client.cli import run

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_delete_help_says_an_artifact_a_job_reads_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["delete", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "job still queued with it fails" not in out
    assert "6 while a job that has not ended" in out


def test_the_contract_says_deleting_an_artifact_a_job_reads_is_refused() -> None:
    proto = " ".join((ROOT / "protos/pruning/v1/pruning.proto").read_text().split())
    comment = proto[proto.index("// Deletes the tenant's record") : proto.index("rpc DeleteArtifact(")]
    assert "fails when its worker looks for it" not in comment
    assert "FAILED_PRECONDITION while // a job that has not ended" in comment
