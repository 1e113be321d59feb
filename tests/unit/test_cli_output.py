"""The `pruning` CLI's output without a server: progress lines, JSON events, download names,
broken pipes."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import cli as cli_module
from pruning_client.cli import follow, run
from pruning_client.results import PruneResult

JOB = "0123456789abcdef01234567"
KERAS_ID, SAVED_ID, INT8_ID = "1" * 64, "2" * 64, "3" * 64


def _progress(epoch: int, step: int, total: int = 100) -> pb.JobEvent:
    return pb.JobEvent(
        job_id=JOB,
        progress=pb.Progress(
            phase="fine_tune",
            epoch=epoch,
            total_epochs=2,
            step=step,
            total_steps=total,
            loss=0.5,
            accuracy=0.9,
            sparsity=0.4,
        ),
    )


def _events() -> list[pb.JobEvent]:
    events = [
        pb.JobEvent(id="1-0", job_id=JOB, state_change=pb.StateChange(to=pb.JOB_STATE_RUNNING)),
        pb.JobEvent(id="2-0", job_id=JOB, log=pb.LogLine(level="INFO", message="fine-tuning")),
    ]
    events += [_progress(1 if step <= 50 else 2, step) for step in range(5, 101, 5)]
    events.append(pb.JobEvent(id="9-0", job_id=JOB, state_change=pb.StateChange(to=pb.JOB_STATE_SUCCEEDED)))
    return events


def _result() -> pb.PruneResult:
    return pb.PruneResult(
        pruned_kernel_sparsity=0.5,
        device="CPU",
        artifacts=[
            pb.Artifact(id=KERAS_ID, format="keras", filename="pruned_0.keras"),
            pb.Artifact(id=SAVED_ID, format="saved_model.zip", filename="pruned_1_saved_model.zip"),
            pb.Artifact(id=INT8_ID, format="tflite_int8", filename="pruned_2.int8.tflite"),
        ],
    )


class FakeJob:
    def __init__(self, client: FakeClient, job_id: str) -> None:
        self.client, self.id = client, job_id

    def watch(self, *, timeout: float | None = None) -> Iterator[pb.JobEvent]:
        yield from _events()

    def status(self) -> pb.Job:
        return pb.Job(id=self.id, state=pb.JOB_STATE_SUCCEEDED, result=_result())

    def result(self, timeout: float | None = None) -> PruneResult:
        return PruneResult.from_proto(_result())


class FakeClient:
    downloads: list[tuple[str, pathlib.Path]] = []

    def __init__(self, target: str, **options: object) -> None:
        self.target = target

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def job(self, job_id: str) -> FakeJob:
        return FakeJob(self, job_id)

    def download(self, artifact_id: str, dest: os.PathLike[str] | str, progress=None) -> pathlib.Path:  # type: ignore[no-untyped-def]
        path = pathlib.Path(dest)
        assert not path.is_dir()
        path.write_text(artifact_id)
        if progress is not None:
            progress(len(artifact_id), len(artifact_id))
        FakeClient.downloads.append((artifact_id, path))
        return path

    def list_jobs(self, *, states=None, labels=None, page_size: int = 50):  # type: ignore[no-untyped-def]
        for i in range(3):
            yield pb.Job(id=f"{i}" * 24, state=pb.JOB_STATE_QUEUED)

    def get_artifact(self, artifact_id: str) -> pb.Artifact:
        return pb.Artifact(id=artifact_id, kind=pb.ARTIFACT_KIND_MODEL, format="keras", filename="../my model.keras")

    def upload_model(self, path: os.PathLike[str] | str, progress=None) -> pb.Artifact:  # type: ignore[no-untyped-def]
        size = os.path.getsize(path)
        if progress is not None:
            progress(size)
        return pb.Artifact(id=KERAS_ID, size=size, filename=pathlib.Path(path).name)


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[type[FakeClient]]:
    FakeClient.downloads = []
    monkeypatch.setattr(cli_module, "Client", FakeClient)
    monkeypatch.chdir(tmp_path)
    yield FakeClient


def test_plain_progress_is_one_line_per_epoch_and_the_last_step() -> None:
    stream = io.StringIO()
    progress = cli_module._Progress(live=False, stream=stream)
    for event in _events():
        if event.WhichOneof("kind") == "progress":
            progress.update(event.progress)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" (")[0] for line in lines] == [
        "fine-tune step 5/100",
        "fine-tune step 55/100",
        "fine-tune step 100/100",
    ]
    assert "epoch 2/2" in lines[-1] and "(100%)" in lines[-1]


def test_plain_progress_every_interval() -> None:
    clock = iter(range(0, 1000, 4))  # 4 s between events
    stream = io.StringIO()
    progress = cli_module._Progress(live=False, stream=stream, clock=lambda: float(next(clock)))
    for step in range(1, 11):
        progress.update(_progress(1, step, total=1000).progress)
    assert len(stream.getvalue().splitlines()) == 4  # at 0 s (first), 12 s, 24 s, 36 s


def test_follow_piped_prints_lines_not_a_bar(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    final = follow(FakeClient("t").job(JOB), show_bar=True, json_lines=False)  # stderr is no terminal here
    assert final.state == pb.JOB_STATE_SUCCEEDED
    captured = capsys.readouterr()
    assert captured.out == "" and "\r" not in captured.err
    assert f"job {JOB}: RUNNING" in captured.err and "[INFO] fine-tuning" in captured.err
    assert "fine-tune step 100/100" in captured.err and f"job {JOB}: SUCCEEDED" in captured.err


def test_follow_json_lines(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    follow(FakeClient("t").job(JOB), show_bar=False, json_lines=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(_events())
    assert json.loads(lines[-1])["state_change"]["to"] == "JOB_STATE_SUCCEEDED"


def test_artifact_names() -> None:
    names = [cli_module._artifact_name(JOB, a) for a in _result().artifacts]
    assert names == [f"pruned-{JOB}.keras", f"pruned-{JOB}.saved_model.zip", f"pruned-{JOB}.int8.tflite"]
    assert cli_module._artifact_name(JOB, pb.Artifact(format="tflite")) == f"pruned-{JOB}.tflite"
    assert cli_module._artifact_name("../x", pb.Artifact(format="h5", filename="a/../b.h5")) == "pruned-___x.h5"
    assert (
        cli_module._artifact_name(JOB, pb.Artifact(format="h5", filename="x.h5"), with_format=True)
        == f"pruned-{JOB}-h5.h5"
    )


@pytest.mark.parametrize("wanted", ["saved_model", "saved_model.zip", "SAVED_MODEL"])
def test_download_format_matches_old_and_new_format_names(
    fake: type[FakeClient], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], wanted: str
) -> None:
    (tmp_path / "out").mkdir()
    assert run(["download", JOB, "-o", "out", "--format", wanted, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == f"out/pruned-{JOB}.saved_model.zip"
    assert fake.downloads == [(SAVED_ID, pathlib.Path(data["path"]))]


@pytest.mark.parametrize(
    ("name", "wanted"),
    [
        ("m.keras", KERAS_ID),
        ("m.zip", SAVED_ID),
        ("m.int8.tflite", INT8_ID),
        ("m.bin", KERAS_ID),
    ],
)
def test_download_to_a_file_name_picks_the_export_its_suffix_names(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str], name: str, wanted: str
) -> None:
    assert run(["download", JOB, "-o", name]) == 0
    assert fake.downloads == [(wanted, pathlib.Path(name))]


def test_download_to_a_file_name_of_a_format_the_job_lacks_is_refused(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    # not the .keras bytes under an .h5 name: exit 3 (not found), as with --format h5
    assert run(["download", JOB, "-o", "model.h5"]) == 3
    err = capsys.readouterr().err
    assert "model.h5 names a .h5 file" in err and "(it has: keras, saved_model, tflite_int8)" in err
    assert not fake.downloads and not pathlib.Path("model.h5").exists()
    assert run(["download", JOB, "-o", "model.tflite"]) == 3  # the int8 export is named .int8.tflite
    assert "names a .tflite file" in capsys.readouterr().err
    assert run(["download", JOB, "-o", "model.h5", "--format", "keras"]) == 0  # asked for: as asked


@pytest.mark.parametrize("name", ["m.onnx", "frozen.pb", "M.PT", "w.safetensors"])
def test_download_to_a_model_file_of_a_format_never_exported_is_refused(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Keras bytes under an .onnx name, with a warning and exit 0, went on to fail in the
    pipeline step that reads them: exit 3 (not found), naming what the job has."""
    assert run(["download", JOB, "-o", name]) == 3
    err = capsys.readouterr().err
    assert f"{name} names a {pathlib.Path(name).suffix.lower()} file, a format the service does not export" in err
    assert "(job" in err and "has: keras, saved_model, tflite_int8)" in err
    assert not fake.downloads and not pathlib.Path(name).exists()


def test_download_destinations(
    fake: type[FakeClient], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["download", JOB]) == 0  # no -o: here, named after the job
    assert capsys.readouterr().out.strip() == f"pruned-{JOB}.keras"
    assert run(["download", JOB, "-o", "new/dir/"]) == 0  # a trailing slash: a directory
    assert capsys.readouterr().out.strip() == f"new/dir/pruned-{JOB}.keras"
    assert run(["download", JOB, "-o", "other/model.keras", "--format", "keras"]) == 0  # a file
    assert capsys.readouterr().out.strip() == "other/model.keras"
    assert run(["download", KERAS_ID, "-o", "new/dir"]) == 0  # an artifact id into an existing directory
    # as uploaded, made a plain file name, with the id's prefix: never the user's own my model.keras
    assert capsys.readouterr().out.strip() == f"new/dir/my_model-{KERAS_ID[:12]}.keras"
    assert run(["download", KERAS_ID, "-o", "file.bin"]) == 0
    assert capsys.readouterr().out.strip() == "file.bin"
    assert pathlib.Path("file.bin").read_text() == KERAS_ID


def test_download_all(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["download", JOB, "--all", "-o", "all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["paths"] == [
        f"all/pruned-{JOB}.keras",
        f"all/pruned-{JOB}.saved_model.zip",
        f"all/pruned-{JOB}.int8.tflite",
    ]
    assert [a for a, _ in fake.downloads] == [KERAS_ID, SAVED_ID, INT8_ID]


def test_download_a_missing_format_is_not_found(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["download", JOB, "--format", "h5"]) == 3
    assert "has no h5 export (it has: keras, saved_model, tflite_int8)" in capsys.readouterr().err


def test_watch_piped_with_download(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["watch", JOB, "--download", "dl"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert f"pruned model (saved_model): dl/pruned-{JOB}.saved_model.zip" in captured.out
    assert len(fake.downloads) == 3


def test_broken_pipe_exits_0_without_a_traceback() -> None:
    """``pruning watch --json | head -1`` with a job that keeps sending events."""
    script = textwrap.dedent(
        """
        import sys, time
        from pruning.v1 import pruning_pb2 as pb
        from pruning_client import cli

        class Job:
            id = "j"
            def watch(self, timeout=None):
                for i in range(100000):
                    yield pb.JobEvent(id=f"{i}-0", log=pb.LogLine(message="x" * 100))
                    time.sleep(0.001 if i > 5 else 0.05)
            def status(self):
                return pb.Job(id="j", state=pb.JOB_STATE_SUCCEEDED)

        class Client:
            def __init__(self, *a, **k): pass
            def __enter__(self): return self
            def __exit__(self, *exc): pass
            def job(self, job_id): return Job()

        cli.Client = Client
        cli.main(["watch", "j", "--json"])
        """
    )
    out = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{sys.executable}" -c "$SCRIPT" | head -1'],
        env={**os.environ, "SCRIPT": script},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert json.loads(out.stdout)["id"] == "0-0"


# -- the upload deadline ------------------------------------------------------------------------


def test_an_upload_stalled_past_its_deadline_exits_7(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--timeout plus the file's size at the floor rate is the upload's deadline; the stub
    answers as gRPC does when it passes."""
    import grpc
    import grpc.aio

    from pruning_client import Client
    from pruning_client.client import UPLOAD_FLOOR_RATE

    got: list[float | None] = []

    class Stub:
        def upload_dataset(self, requests: Iterator[bytes], timeout: float | None = None, metadata=()):
            got.append(timeout)
            for _ in requests:
                pass
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Deadline Exceeded"
            )

    class StubbedClient(Client):
        def __init__(self, target: str, **options: object) -> None:
            super().__init__(target, **options)  # type: ignore[arg-type]
            self._transfers = Stub()  # type: ignore[assignment]

    path = tmp_path / "data.npz"
    path.write_bytes(b"\0" * (2 * 1024 * 1024 + 5))
    monkeypatch.setattr(cli_module, "Client", StubbedClient)
    assert run(["--target", "127.0.0.1:1", "--timeout", "5", "--json", "upload", "dataset", str(path)]) == 7
    assert got == [pytest.approx(5 + path.stat().st_size / UPLOAD_FLOOR_RATE)]
    assert json.loads(capsys.readouterr().out)["error"] == "DeadlineExceeded"


class FailedJob(FakeJob):
    def watch(self, *, timeout: float | None = None) -> Iterator[pb.JobEvent]:
        yield from _events()[:-1]
        yield pb.JobEvent(id="9-0", job_id=JOB, state_change=pb.StateChange(to=pb.JOB_STATE_FAILED))

    def status(self) -> pb.Job:
        return pb.Job(id=self.id, state=pb.JOB_STATE_FAILED)

    def result(self, timeout: float | None = None) -> PruneResult:
        from pruning_client import JobFailed

        raise JobFailed(f"job {self.id} failed: the labels are not class indices", job_code=3, job=self.status())


def test_watch_json_of_a_failed_job_keeps_stdout_to_events(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeClient, "job", lambda self, job_id: FailedJob(self, job_id))
    assert run(["watch", JOB, "--json"]) == 8
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert all(e["job_id"] == JOB for e in events) and events[-1]["state_change"]["to"] == "JOB_STATE_FAILED"
    error = json.loads(err)  # the error as --json says every error, on stderr
    assert error["error"] == "JobFailed" and error["job_id"] == JOB and "class indices" in error["message"]
    assert run(["result", JOB, "--json"]) == 8
    error = json.loads(capsys.readouterr().out)
    assert error["error"] == "JobFailed" and error["job_id"] == JOB  # which job, without parsing the message
    assert error["job_code"] == "INVALID_ARGUMENT" and "code" not in error  # why: bad input, not worth a retry


class LostJob(FakeJob):
    def watch(self, *, timeout: float | None = None) -> Iterator[pb.JobEvent]:
        from pruning_client import Unavailable

        yield from _events()[:2]
        raise Unavailable("the server went away")


def test_watch_json_of_a_lost_connection_names_the_job_and_the_code(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeClient, "job", lambda self, job_id: LostJob(self, job_id))
    assert run(["watch", JOB, "--json"]) == 7
    error = json.loads(capsys.readouterr().err)
    assert (error["error"], error["code"], error["job_id"]) == ("Unavailable", "UNAVAILABLE", JOB)


def test_transfer_bar_shows_bytes_on_a_terminal_and_nothing_elsewhere() -> None:
    stream = io.StringIO()
    with cli_module._Bytes("upload model.keras", 3 * 1024 * 1024, live=True, stream=stream) as bar:
        for _ in range(3):
            bar.sent(1024 * 1024)
        assert bar.bar is not None and bar.bar.n == 3 * 1024 * 1024
    shown = stream.getvalue()
    assert "upload model.keras" in shown and "3.00M" in shown
    quiet = io.StringIO()
    with cli_module._Bytes("download x", live=False, stream=quiet) as bar:
        bar.received(1024, 4096)
    assert quiet.getvalue() == ""


def test_cli_upload_and_download_show_a_bar_only_on_a_terminal(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    labels: list[tuple[str, bool]] = []
    opened = cli_module._Bytes.__init__

    def record(self, label, total=None, *, live, stream=None):  # type: ignore[no-untyped-def]
        labels.append((label, live))
        opened(self, label, total, live=live, stream=stream)

    monkeypatch.setattr(cli_module._Bytes, "__init__", record)
    model = tmp_path / "model.keras"
    model.write_bytes(b"model")
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        assert run(["upload", "model", str(model)]) == 0
        assert run(["upload", "model", str(model), "--json"]) == 0
    # piped: no bar, with or without --json; on a terminal: a bar, unless --json
    assert labels == [("upload model.keras", live) for live in (False, False, True, False)]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run(["download", KERAS_ID, "-o", str(tmp_path / "back.keras")]) == 0
    assert labels[-1] == ("download back.keras", True)


class UnknownJob(FakeJob):
    def watch(self, *, timeout: float | None = None) -> Iterator[pb.JobEvent]:
        from pruning_client import NotFound

        raise NotFound(f"no job {self.id}")
        yield  # a generator, as the SDK's


def test_watch_json_says_any_error_on_stderr_so_the_events_file_holds_events_only(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeClient, "job", lambda self, job_id: UnknownJob(self, job_id))
    assert run(["watch", JOB, "--json"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and json.loads(err)["error"] == "NotFound"


@pytest.mark.parametrize(
    ("state", "said"),
    [
        (pb.JOB_STATE_RUNNING, " phase export step"),
        (pb.JOB_STATE_FAILED, " stopped in phase export step"),
        (pb.JOB_STATE_SUCCEEDED, "attempt 1 step"),  # went through every phase: none named
    ],
)
def test_status_names_the_phase_a_job_is_in_or_stopped_in(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], state: int, said: str
) -> None:
    job = pb.Job(id=JOB, state=state, attempt=1, progress=pb.Progress(phase="export", step=4, total_steps=4))
    monkeypatch.setattr(FakeClient, "get_job", lambda self, job_id: job, raising=False)
    assert run(["status", JOB]) == 0
    assert said in capsys.readouterr().out


def test_json_output_writes_64_bit_integers_as_numbers() -> None:
    job = pb.Job(id=JOB, progress=pb.Progress(step=4, total_steps=22))
    job.plan.total_steps = 22
    job.plan.layers.add(name="dense", weights=120)
    dumped = cli_module._dump(job)
    assert dumped["progress"]["total_steps"] == 22 and dumped["plan"]["layers"][0]["weights"] == 120
    assert cli_module._dump(pb.Artifact(id="a" * 64, size=103202))["size"] == 103202  # not "103202"


def test_watch_json_says_a_local_file_error_on_stderr_too(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(self, artifact_id, dest, progress=None):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", str(dest))

    monkeypatch.setattr(FakeClient, "download", refused)
    assert run(["watch", JOB, "--json", "--download", "out"]) == 2
    out, err = capsys.readouterr()
    assert all("job_id" in json.loads(line) for line in out.splitlines())  # events only
    assert json.loads(err)["error"] == "PermissionError"


def test_one_violation_is_printed_whole_though_the_message_was_cut(capsys: pytest.CaptureFixture[str]) -> None:
    """The server cuts its message as a whole (200 bytes), each violation on its own: a field
    path and a description of 190 bytes come back whole only in the violation."""
    import grpc

    from pruning_client import InvalidArgument

    description = "'mse': not one of " + "x" * 160 + ", mean_absolute_error"
    cut = f"spec.training.loss: {description}"[:197] + "..."
    error = InvalidArgument(
        f"INVALID_ARGUMENT: {cut}",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        details=cut,
        field_violations=[("spec.training.loss", description)],
    )
    cli_module._report(error, json_output=False)
    assert capsys.readouterr().err.strip() == f"error: INVALID_ARGUMENT: spec.training.loss: {description}"


def test_list_says_when_it_left_jobs_out(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list", "--limit", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in data["jobs"]] == ["0" * 24, "1" * 24] and data["truncated"] is True
    assert run(["list", "--limit", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["truncated"] is False
    assert run(["list", "--limit", "2"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("... more than 2 (raise --limit)")


def test_an_unfinished_job_s_timeout_names_the_job_in_json_and_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from pruning_client.cli import _report
    from pruning_client.exceptions import JobTimeout

    _report(JobTimeout("job x still JOB_STATE_RUNNING after 2s", job=pb.Job(id="j" * 24)), json_output=True)
    out, err = capsys.readouterr()
    assert json.loads(out)["job_id"] == "j" * 24 and json.loads(out)["error"] == "JobTimeout"
    assert err == "error: job x still JOB_STATE_RUNNING after 2s\n"


# -- TLS against a plaintext server ---------------------------------------------------------------


def test_tls_against_a_plaintext_server_is_one_line_that_says_so() -> None:
    """gRPC's C core printed a line per failed handshake (three before the answer); the CLI's
    error is the only line, and it names the likely cause."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        command = ["--target", f"127.0.0.1:{port}", "--tls", "--timeout", "20", "list"]
        out = subprocess.run(
            [sys.executable, "-m", "pruning_client.cli", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop(None)
    assert out.returncode == 7, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: UNAVAILABLE:")
    assert f"the TLS handshake with 127.0.0.1:{port} failed: a server without TLS takes no --tls" in lines[0]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_plaintext_against_a_tls_server_hints_at_tls(tmp_path: pathlib.Path) -> None:
    """Forgetting --tls against a TLS server said only "Socket closed"."""
    from concurrent import futures

    import grpc

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(["openssl", *request, *subject], check=True, capture_output=True)
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.start()
    try:
        command = ["--target", f"127.0.0.1:{port}", "--timeout", "20", "list"]
        out = subprocess.run(
            [sys.executable, "-m", "pruning_client.cli", *command], capture_output=True, text=True, timeout=120
        )
    finally:
        server.stop(None)
    assert out.returncode == 7, out.stderr
    assert f"127.0.0.1:{port} closed the connection at once: if it serves TLS, give --tls" in out.stderr


# -- Ctrl-C while submit waits ---------------------------------------------------------------------


@pytest.mark.parametrize("json_output", [False, True])
def test_ctrl_c_while_submit_waits_says_which_job_keeps_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], json_output: bool
) -> None:
    import contextlib

    class Job:
        id = JOB
        warnings: list[str] = []

    class Client:
        def submit(self, *a, **k):
            return Job()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_client", lambda opts: contextlib.nullcontext(Client()))
    monkeypatch.setattr(cli_module, "_spec", lambda client, **spec: pb.JobSpec(model_id="a" * 64))
    monkeypatch.setattr(cli_module, "follow", interrupted)
    args = ["submit", "--model", "a" * 64, "--wait"] + (["--json"] if json_output else [])
    assert run(args) == 130
    out, err = capsys.readouterr()
    assert f"interrupted: job {JOB} keeps running (pruning watch {JOB} follows it" in err
    if json_output:
        assert json.loads(out) == {"job_id": JOB, "interrupted": True}
    else:
        assert out == "" and f"job {JOB} submitted" in err


@pytest.mark.parametrize("command", [["watch", JOB], ["--json", "watch", JOB], ["result", JOB]])
def test_ctrl_c_while_watch_or_result_waits_says_the_job_keeps_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """They stopped with ^C alone: a user could not tell whether the job was cancelled."""
    import contextlib

    class Handle:
        id = JOB

        def result(self, *a, **k):
            raise KeyboardInterrupt

    class Client:
        def job(self, job_id):
            return Handle()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_client", lambda opts: contextlib.nullcontext(Client()))
    monkeypatch.setattr(cli_module, "follow", interrupted)
    assert run(command) == 130
    out, err = capsys.readouterr()
    assert (
        f"interrupted: job {JOB} keeps running (pruning watch {JOB} follows it, pruning cancel {JOB} stops it)" in err
    )
    assert (json.loads(out) == {"job_id": JOB, "interrupted": True}) if "--json" in command else out == ""


def test_ctrl_c_while_a_sweep_is_waited_for_says_it_keeps_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import contextlib

    class Handle:
        id = JOB

    class Client:
        def create_sweep(self, *a, **k):
            return Handle()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_client", lambda opts: contextlib.nullcontext(Client()))
    monkeypatch.setattr(cli_module, "_spec", lambda client, **spec: pb.JobSpec(model_id="a" * 64))
    monkeypatch.setattr(cli_module, "_follow_sweep", interrupted)
    assert run(["sweep", "--model", "a" * 64, "--sparsities", "0.5,0.7", "--wait"]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: sweep {JOB} keeps running (pruning sweep-status {JOB} shows it, pruning sweep-cancel" in err


@pytest.mark.parametrize("command", [["upload", "dataset"], ["download", "a" * 64]])
def test_ctrl_c_during_an_upload_or_a_download_with_json_prints_the_error_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, command: list[str]
) -> None:
    """``--json`` promises the error object on stdout; Ctrl-C there left stdout empty (a
    pipeline parsing it met nothing), where watch and submit --wait print theirs."""
    import contextlib

    data = tmp_path / "d.npz"
    data.write_bytes(b"x")

    class Client:
        def upload_dataset(self, *a, **k):
            raise KeyboardInterrupt

        def download(self, *a, **k):
            raise KeyboardInterrupt

        def get_artifact(self, *a, **k):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "_client", lambda opts: contextlib.nullcontext(Client()))
    args = [*command, *([str(data)] if command[0] == "upload" else ["-o", str(tmp_path / "out.npz")]), "--json"]
    assert run(args) == 130
    assert json.loads(capsys.readouterr().out) == {
        "error": "Interrupted",
        "message": "interrupted (Ctrl-C)",
        "field_violations": [],
    }


# -- hints on errors a user can fix ------------------------------------------------------------------


def test_status_of_a_sweeps_id_points_to_sweep_status(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pruning_client import NotFound

    def no_job(self, job_id):  # type: ignore[no-untyped-def]
        raise NotFound(f"NOT_FOUND: no job {job_id}")

    monkeypatch.setattr(FakeClient, "get_job", no_job, raising=False)
    monkeypatch.setattr(FakeClient, "get_sweep", lambda self, sweep_id: pb.Sweep(id=sweep_id), raising=False)
    assert run(["status", JOB]) == 3
    assert f"({JOB} is a sweep: pruning sweep-status {JOB})" in capsys.readouterr().err


def test_a_call_without_a_key_says_how_to_give_one(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pruning_client import Unauthenticated

    def refused(self, **kwargs):  # type: ignore[no-untyped-def]
        raise Unauthenticated("UNAUTHENTICATED: missing or unknown API key (x-api-key)")

    monkeypatch.setattr(FakeClient, "list_jobs", refused)
    monkeypatch.delenv("PRUNING_API_KEY", raising=False)
    assert run(["list"]) == 4
    assert "(give the tenant's key with --api-key or PRUNING_API_KEY)" in capsys.readouterr().err


def test_download_of_a_job_still_running_says_it_waits(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeJob, "status", lambda self: pb.Job(id=self.id, state=pb.JOB_STATE_RUNNING))
    monkeypatch.setattr(FakeJob, "result", lambda self, timeout=None: PruneResult.from_proto(_result()))
    assert run(["download", JOB]) == 0
    assert f"waiting for job {JOB} to end (RUNNING)" in capsys.readouterr().err


def test_download_to_a_name_no_export_has_says_which_export_it_got(
    fake: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["download", JOB, "-o", "m.model"]) == 0  # no model format's suffix: the pruned model
    assert FakeClient.downloads[-1][0] == KERAS_ID
    assert "warning: m.model gets the keras export (a .keras file): no export of job" in capsys.readouterr().err
    assert run(["download", JOB, "-o", "m.keras"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_report_to_a_file_name_is_a_usage_error(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["report", JOB, "-o", "x.md"]) == 2
    assert "-o is the folder report.md and report.html go into" in capsys.readouterr().err
    assert not pathlib.Path("x.md").exists()


def test_list_has_a_header_and_no_trailing_blanks(fake: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["job", "state", "created", "(UTC)", "labels"] and len(lines) == 4
    assert all(line == line.rstrip() for line in lines)
    assert lines[1].startswith("0" * 24 + "  QUEUED")


def test_upload_json_writes_the_model_summary_as_inspect_json_does(
    fake: type[FakeClient], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A layer's prunable: false and params: 0 were left out of upload --json (proto3's JSON
    drops default values) where inspect --json kept them."""
    summary = pb.ModelSummary(keras_version=3, total_params=10)
    summary.layers.add(name="flatten", class_name="Flatten", params=0, prunable=False, convertible=True)

    def upload_model(self, path, progress=None):  # type: ignore[no-untyped-def]
        return pb.Artifact(id=KERAS_ID, size=5, filename="model.keras", model=summary)

    monkeypatch.setattr(FakeClient, "upload_model", upload_model)
    model = tmp_path / "model.keras"
    model.write_bytes(b"model")
    assert run(["upload", "model", str(model), "--json"]) == 0
    (layer,) = json.loads(capsys.readouterr().out)["model"]["layers"]
    assert layer == {
        "name": "flatten",
        "class_name": "Flatten",
        "params": 0,
        "prunable": False,
        "convertible": True,
        "left_whole": "",
    }


@pytest.mark.parametrize("json_output", [False, True])
def test_a_local_error_after_a_followed_job_names_the_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, json_output: bool
) -> None:
    """A full disk while watch --download fetched the exports said only "No space left on
    device", and the --json error had no job_id: a pipeline could not find the job it ran."""
    import contextlib
    import errno

    class Handle:
        id = JOB

    class Client:
        def job(self, job_id):
            return Handle()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "m.keras"))

    done = pb.Job(id=JOB, state=pb.JOB_STATE_SUCCEEDED)
    monkeypatch.setattr(cli_module, "_client", lambda opts: contextlib.nullcontext(Client()))
    monkeypatch.setattr(cli_module, "follow", lambda *a, **k: done)
    monkeypatch.setattr(cli_module, "_fetch_job", full)
    argv = ["watch", JOB, "--download", str(tmp_path / "out")] + (["--json"] if json_output else [])
    assert run(argv) == 2
    out, err = capsys.readouterr()
    assert f"(job {JOB} goes on, or ended: pruning result {JOB}, pruning download {JOB})" in err
    if json_output:
        error = json.loads(out.splitlines()[-1]) if out.strip() else json.loads(err.splitlines()[0])
        assert error["job_id"] == JOB and error["error"] == "OSError"


def test_a_terminal_of_no_width_gets_plain_lines_not_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pseudo-terminal nobody sized (0 columns: some CI runners, ``docker exec -t``) showed
    neither a bar nor any progress line; one of 80 columns gets the bar."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    try:
        with open(follower, "w", closefd=False) as terminal:
            monkeypatch.setattr(sys, "stderr", terminal)
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
            assert sys.stderr.isatty() and not cli_module._terminal()
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            assert cli_module._terminal()
    finally:
        os.close(leader)
        os.close(follower)


def test_help_shows_what_a_default_of_zero_stands_for(capsys: pytest.CaptureFixture[str]) -> None:
    """ "--search-low ...; 0 = 0.5. [default: 0.0]" read as two defaults; now the one that applies."""
    import re

    assert run(["submit", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, shown in [("--search-low", "(0.5)"), ("--max-trials", "(8)"), ("--max-train-samples", "(all)")]:
        # the option's own line ("--max-trials INTEGER At most ..."), not the command's text naming it
        assert re.search(rf"{option} [A-Z]+ [^\[]*\[default: {re.escape(shown)}\]", text), option
    shown_zero = re.findall(r"--[a-z-]+ [A-Z]+ [^\[]*\[default: 0(?:\.0)?\]", text)
    assert [found.split()[0] for found in shown_zero] == ["--begin-step"], shown_zero  # 0 is step 0 there
