"""Edges of the SDK and the CLI without a server: reports without plots, directory downloads,
unreadable uploads, local errors as one line, API keys gRPC cannot send, partial files longer
than the artifact, and ``--schedule none`` without structured pruning."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from pruning import wire
from pruning.v1 import pruning_pb2 as pb
from pruning_client import Client, JobHandle, OutOfRange
from pruning_client import cli as cli_module
from pruning_client.aio import AsyncClient
from pruning_client.cli import run
from pruning_client.report import job_report
from pruning_client.results import JobPlan

DATA = bytes(range(256)) * 40
ID = hashlib.sha256(DATA).hexdigest()
JOB = "0123456789abcdef01234567"


class RangeError(grpc.RpcError):
    """The server's answer to an offset past the artifact's end."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OUT_OF_RANGE

    def details(self) -> str:
        return f"offset must be in [0, {len(DATA)}]"


class FakeStub:
    """DownloadArtifact as the server answers it (OUT_OF_RANGE past ``size``), offsets
    recorded; an upload call fails the test."""

    def __init__(self, size: int = len(DATA)) -> None:
        self.size, self.offsets = size, []

    def DownloadArtifact(self, request: pb.DownloadArtifactRequest, metadata: Any = ()) -> Iterator[pb.DownloadChunk]:
        self.offsets.append(request.offset)
        if request.offset > self.size:
            raise RangeError()
        for start in range(request.offset, len(DATA), 1000):
            message = pb.DownloadChunk(offset=start, data=DATA[start : start + 1000], total_size=len(DATA))
            yield wire.parse_download_chunk(message.SerializeToString())  # as the client's calls read it

    def UploadModel(self, requests: Any, metadata: Any = ()) -> pb.Artifact:
        raise AssertionError("no call for a file that cannot be read")

    UploadDataset = UploadModel

    # the client's transfer calls (pruning.wire.FramedCalls) are these too
    def download(self, request: pb.DownloadArtifactRequest, metadata: Any = ()) -> Any:
        return self.DownloadArtifact(request, metadata)

    upload_model = upload_dataset = UploadModel


class FakeAsyncStub(FakeStub):
    def DownloadArtifact(self, request: pb.DownloadArtifactRequest, metadata: Any = ()) -> Any:
        chunks = super().DownloadArtifact(request, metadata)

        async def stream() -> AsyncIterator[pb.DownloadChunk]:
            for chunk in chunks:
                yield chunk

        return stream()


class StubClient(Client):
    """The real Client, its stub replaced (it never connects)."""

    def __init__(self, target: str = "127.0.0.1:1", **options: Any) -> None:
        super().__init__(target, **options)
        self.stub: Any = FakeStub()
        self._transfers: Any = self.stub


def _async(test: Any) -> Any:
    """Runs ``test(client)`` with an AsyncClient on a fake stub; returns (its result, the stub)."""

    async def main() -> Any:
        async with AsyncClient("127.0.0.1:1") as client:
            client.stub = client._transfers = stub = FakeAsyncStub()
            return await test(client), stub

    return asyncio.run(main())


# -- 1. a job's report without plots -----------------------------------------------------------


def _job(state: int, *formats: str) -> pb.Job:
    job = pb.Job(id=JOB, state=state)
    for i, fmt in enumerate(formats):
        job.result.artifacts.add(id=str(i) * 64, format=fmt, filename=f"f{i}.{fmt}")
    return job


@pytest.mark.parametrize(
    "job, files",
    [
        (_job(pb.JOB_STATE_FAILED), {}),
        (_job(pb.JOB_STATE_CANCELLED), {}),
        (_job(pb.JOB_STATE_SUCCEEDED, "keras"), {}),  # the report turned off
        (_job(pb.JOB_STATE_SUCCEEDED, "keras", "tensorboard"), {"tensorboard": "tb.zip"}),
    ],
    ids=["failed", "cancelled", "report-off", "tensorboard-only"],
)
def test_a_report_without_plots_says_so(job: pb.Job, files: dict[str, str]) -> None:
    markdown, page = job_report(job, files)
    assert "## Plots" in markdown and "<img" not in page


def test_a_report_shows_the_plots_given_and_leaves_out_the_others() -> None:
    job = _job(pb.JOB_STATE_SUCCEEDED, "keras", "history_png", "layers_png")
    markdown, page = job_report(job, {"history_png": "h.png"})
    assert "![training](h.png)" in markdown and "layers" not in page.split("<figure>", 1)[1]
    assert "## Plots" not in job_report(job)[0]  # the job has plots; the caller did not fetch them


class ReportClient(StubClient):
    def get_job(self, job_id: str) -> pb.Job:
        return _job(pb.JOB_STATE_FAILED)


def test_pruning_report_of_a_job_without_plots(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_module, "Client", ReportClient)
    assert run(["report", JOB, "-o", f"{tmp_path}/r/", "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert set(written) == {"report_md", "report_html"}
    assert "## Plots" in pathlib.Path(written["report_md"]).read_text()


# -- 2. a destination ending with a separator is a directory ------------------------------------


def test_download_into_a_directory_that_does_not_exist_yet(tmp_path: pathlib.Path) -> None:
    with StubClient() as client:
        path = client.download(ID, f"{tmp_path}/out/", filename="model.keras")
    assert path == tmp_path / "out" / "model.keras" and path.read_bytes() == DATA


def test_a_download_to_a_link_writes_the_file_it_names(tmp_path: pathlib.Path) -> None:
    (tmp_path / "real.keras").write_bytes(b"old")
    (tmp_path / "link.keras").symlink_to(tmp_path / "real.keras")
    with StubClient() as client:
        path = client.download(ID, tmp_path / "link.keras")
    assert path == tmp_path / "real.keras" and path.read_bytes() == DATA
    assert (tmp_path / "link.keras").is_symlink()


class Gone(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "artifact not found"


class GoneStub(FakeStub):
    def download(self, request: pb.DownloadArtifactRequest, metadata: Any = ()) -> Any:
        raise Gone()


def test_a_failed_download_removes_only_the_folders_it_made(tmp_path: pathlib.Path) -> None:
    """``new/../old/sub/x``: ``old`` existed (empty) and stays; ``new`` and ``sub`` were made and go."""
    from pruning_client import NotFound

    (tmp_path / "old").mkdir()
    with JobClient() as client:
        client._transfers = GoneStub()
        with pytest.raises(NotFound):
            client.download(ID, tmp_path / "new" / ".." / "old" / "sub" / "x.keras")
        with pytest.raises(NotFound):
            JobHandle(client, JOB, client.get_job(JOB)).download(f"{tmp_path}/job-out/deep/")
        with pytest.raises(NotFound):
            JobHandle(client, JOB, client.get_job(JOB)).download_all(tmp_path / "all")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"] and not any((tmp_path / "old").iterdir())


def test_a_download_into_a_folder_never_replaces_a_link_or_fifo(tmp_path: pathlib.Path) -> None:
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "model.keras").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "pipe.keras")
    (tmp_path / "loop.keras").symlink_to(tmp_path / "loop.keras")
    with StubClient() as client:
        assert client.download(ID, f"{tmp_path}/", filename="model.keras") == tmp_path / "real"
        for name, needle in (("pipe.keras", "not a regular file"), ("loop.keras", "symbolic links")):
            with pytest.raises(OSError, match=needle):
                client.download(ID, f"{tmp_path}/", filename=name)
    assert (tmp_path / "real").read_bytes() == DATA and (tmp_path / "model.keras").is_symlink()
    assert (tmp_path / "pipe.keras").is_fifo()


def test_async_download_into_a_directory_that_does_not_exist_yet(tmp_path: pathlib.Path) -> None:
    async def test(client: AsyncClient) -> pathlib.Path:
        return await client.download(ID, f"{tmp_path}/out/")

    path, _ = _async(test)
    assert path == tmp_path / "out" / ID and path.read_bytes() == DATA


class JobClient(StubClient):
    def get_job(self, job_id: str) -> pb.Job:
        job = pb.Job(id=job_id, state=pb.JOB_STATE_SUCCEEDED)
        job.result.artifacts.add(id=ID, format="keras", filename="pruned_0.keras")
        return job


def test_job_download_into_a_directory_that_does_not_exist_yet(tmp_path: pathlib.Path) -> None:
    with JobClient() as client:
        path = JobHandle(client, "j", client.get_job("j")).download(f"{tmp_path}/onedir/", "keras")
    assert path == tmp_path / "onedir" / "pruned-j.keras" and path.read_bytes() == DATA


# -- 3. an upload that cannot read its file fails before any call --------------------------------


def _unreadable(tmp_path: pathlib.Path, kind: str) -> pathlib.Path:
    if kind == "missing":
        return tmp_path / "nonexistent.keras"
    if kind == "directory":
        return tmp_path
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "locked.keras"
    path.write_bytes(DATA)
    path.chmod(0)
    return path


@pytest.mark.parametrize(
    "kind, error", [("missing", FileNotFoundError), ("directory", IsADirectoryError), ("locked", PermissionError)]
)
@pytest.mark.parametrize("method", ["upload_model", "upload_dataset"])
def test_an_unreadable_upload_raises_its_os_error_naming_the_path(
    tmp_path: pathlib.Path, kind: str, error: type[OSError], method: str
) -> None:
    path = _unreadable(tmp_path, kind)
    with StubClient() as client, pytest.raises(error) as raised:
        getattr(client, method)(str(path))
    assert raised.value.filename == str(path)

    async def test(client: AsyncClient) -> None:
        await getattr(client, method)(path)

    with pytest.raises(error):
        _async(test)


# -- 4. local errors and unsendable API keys on the command line ---------------------------------


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    return captured.err.strip()


def _local_error_cases() -> list[Any]:
    cases: list[Any] = [
        (["download", ID, "-o", "{tmp}/a-file/x.keras"], "a-file"),
        (["download", ID, "-o", "{tmp}/fifo"], "not a regular file"),  # never replaced by a file
        (["download", ID, "-o", "{tmp}/link-to-fifo"], "not a regular file"),
    ]
    proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc")
    cases += [
        pytest.param(["download", ID, "-o", "/proc/x.keras"], "/proc/x.keras", marks=proc),
        pytest.param(["report", JOB, "-o", "/proc/rep5/"], "/proc/rep5", marks=proc),
    ]
    return cases


@pytest.mark.parametrize("argv, needle", _local_error_cases())
def test_a_local_file_error_is_exit_2_and_one_line(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    monkeypatch.setattr(cli_module, "Client", ReportClient)
    (tmp_path / "a-file").write_text("in the way")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link-to-fifo").symlink_to(tmp_path / "fifo")
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert run(argv) == 2
    assert (tmp_path / "fifo").is_fifo() and (tmp_path / "link-to-fifo").is_symlink()
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and needle in line
    assert run([*argv, "--json"]) == 2
    shown = json.loads(capsys.readouterr().out)
    assert shown["error"].endswith("Error") and needle in shown["message"] and shown["field_violations"] == []


class MadeClient(StubClient):
    made = 0

    def __init__(self, target: str = "127.0.0.1:1", **options: Any) -> None:
        MadeClient.made += 1
        super().__init__(target, **options)


@pytest.mark.parametrize("key", ["k\udce9", "ключ", "a\nb", "tab\there"])
@pytest.mark.parametrize("from_env", [False, True])
def test_an_api_key_grpc_cannot_send_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], key: str, from_env: bool
) -> None:
    MadeClient.made = 0
    monkeypatch.setattr(cli_module, "Client", MadeClient)
    monkeypatch.delenv("PRUNING_API_KEY", raising=False)
    if from_env:
        monkeypatch.setenv("PRUNING_API_KEY", key)
    assert run(["list", *([] if from_env else ["--api-key", key])]) == 2
    line = _one_error_line(capsys)
    assert "--api-key" in line and "PRUNING_API_KEY" in line
    assert MadeClient.made == 0


@pytest.mark.parametrize("key", ["k\udce9", "ключ", "a\nb", "\x7f"])
def test_the_clients_refuse_an_api_key_grpc_cannot_send(key: str) -> None:
    with pytest.raises(ValueError, match="api_key"):
        Client("127.0.0.1:1", api_key=key)

    async def make() -> None:
        AsyncClient("127.0.0.1:1", api_key=key)

    with pytest.raises(ValueError, match="api_key"):
        asyncio.run(make())
    Client("127.0.0.1:1", api_key="k-1 ~printable").close()


# -- 5. a partial file longer than the artifact ------------------------------------------------


def _long_part(tmp_path: pathlib.Path) -> pathlib.Path:
    part = tmp_path / f"model.keras.{ID[:16]}.part"
    part.write_bytes(DATA + b"left over from something else")
    return part


def test_a_partial_file_longer_than_the_artifact_is_discarded(tmp_path: pathlib.Path) -> None:
    part = _long_part(tmp_path)
    with StubClient() as client:
        assert client.download(ID, tmp_path / "model.keras").read_bytes() == DATA
        assert client.stub.offsets == [len(DATA) + 29, 0]
    assert not part.exists()


def test_async_a_partial_file_longer_than_the_artifact_is_discarded(tmp_path: pathlib.Path) -> None:
    part = _long_part(tmp_path)

    async def test(client: AsyncClient) -> pathlib.Path:
        return await client.download(ID, tmp_path / "model.keras")

    path, stub = _async(test)
    assert path.read_bytes() == DATA and stub.offsets == [len(DATA) + 29, 0] and not part.exists()


def test_out_of_range_from_offset_0_stands(tmp_path: pathlib.Path) -> None:
    with StubClient() as client:
        client.stub = client._transfers = FakeStub(size=-1)
        with pytest.raises(OutOfRange):
            client.download(ID, tmp_path / "model.keras", resume=False)
        assert client.stub.offsets == [0]


# -- 6. --schedule none needs structured pruning -----------------------------------------------


class SpecClient(StubClient):
    sent: list[pb.JobSpec] = []

    def validate(self, spec: pb.JobSpec, **_: Any) -> JobPlan:
        SpecClient.sent.append(spec)
        return JobPlan.from_proto(pb.JobPlan())


@pytest.mark.parametrize("command", [["submit", "--dry-run"], ["sweep", "--sparsities", "0.5,0.7"]])
def test_schedule_none_without_structured_pruning_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    SpecClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SpecClient)
    assert run([*command, "--model", "a" * 64, "--schedule", "none", "--final-sparsity", "0.3"]) == 2
    line = _one_error_line(capsys)
    assert "--schedule none" in line and "--structured-ratio" in line
    assert SpecClient.sent == []


@pytest.mark.parametrize("structured", [["--structured-ratio", "0.5"], ["--layer-ratio", "dense=0.5"]])
def test_schedule_none_with_structured_pruning_sends_no_schedule(
    monkeypatch: pytest.MonkeyPatch, structured: list[str]
) -> None:
    SpecClient.sent = []
    monkeypatch.setattr(cli_module, "Client", SpecClient)
    assert run(["submit", "--dry-run", "--model", "a" * 64, "--schedule", "none", *structured]) == 0
    (spec,) = SpecClient.sent
    assert not spec.pruning.HasField("schedule") and spec.pruning.HasField("structured")
