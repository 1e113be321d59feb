"""The job handle against a fake client: follows the stream, reconnects, resumes, maps outcomes."""

import pathlib
import time

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import (
    DeadlineExceeded,
    JobCancelled,
    JobFailed,
    JobHandle,
    JobTimeout,
    NotFound,
    Unavailable,
)


def event(n, **kind):
    return pb.JobEvent(id=f"{n}-0", **kind)


def finished(job_id, state=pb.JOB_STATE_SUCCEEDED):
    job = pb.Job(id=job_id, state=state)
    if state == pb.JOB_STATE_SUCCEEDED:
        job.result.pruned.accuracy = 0.97
        job.result.artifacts.add(id="a" * 64, format="keras", filename="pruned_0.keras")
    if state == pb.JOB_STATE_FAILED:
        job.error.code, job.error.message = 3, "label 7 outside the model's 4 classes"
    return job


class FakeClient:
    """Serves ``events`` on watch_events, dropping the stream (UNAVAILABLE) after the counts in
    ``drop_after``; with ``hang`` a stream that ran out of events stays open, as the server's
    does for a running job, until its deadline. get_job answers ``states`` in turn (the last
    one repeats)."""

    def __init__(self, events, drop_after=(), states=(pb.JOB_STATE_RUNNING,), hang=False):
        self.events, self.drop_after, self.states, self.hang = events, list(drop_after), list(states), hang
        self.calls, self.timeouts, self.gets = [], [], 0

    def watch_events(self, job_id, after, *, timeout=None):
        self.calls.append(after)
        self.timeouts.append(timeout)
        start = 0 if not after else [e.id for e in self.events].index(after) + 1
        limit = self.drop_after.pop(0) if self.drop_after else None
        for i, e in enumerate(self.events[start:]):
            if limit is not None and i == limit:
                raise Unavailable("connection reset")
            yield e
        if self.hang:
            assert timeout is not None, "a stream without a deadline would hang"
            time.sleep(timeout)
            raise DeadlineExceeded("deadline exceeded")

    def get_job(self, job_id):
        self.gets += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return finished(job_id, state)


def events_ending(state):
    return (
        [
            event(1, state_change=pb.StateChange(to=pb.JOB_STATE_QUEUED)),
            event(2, state_change=pb.StateChange(to=pb.JOB_STATE_RUNNING)),
        ]
        + [event(n, progress=pb.Progress(step=n)) for n in range(3, 8)]
        + [event(8, state_change=pb.StateChange(to=state))]
    )


EVENTS = events_ending(pb.JOB_STATE_SUCCEEDED)


@pytest.fixture(autouse=True)
def no_delays(monkeypatch):
    monkeypatch.setattr("pruning_client.job.RECONNECT_DELAYS", (0,))


def test_watch_reconnects_and_resumes():
    fake = FakeClient(EVENTS, drop_after=[3, 2])
    seen = [e.id for e in JobHandle(fake, "j").watch()]
    assert seen == [e.id for e in EVENTS]
    assert fake.calls == ["", "3-0", "5-0"]
    assert fake.timeouts == [None, None, None] and fake.gets == 0


def test_watch_resumes_on_the_next_call_after_the_last_event_seen():
    fake = FakeClient(EVENTS)
    handle = JobHandle(fake, "j")
    for e in handle.watch():
        if e.id == "4-0":
            break
    assert handle.last_event_id == "4-0"
    assert [e.id for e in handle.watch()] == [e.id for e in EVENTS[4:]]
    assert fake.calls == ["", "4-0"]


def test_watch_gives_up_after_max_reconnects():
    fake = FakeClient(EVENTS, drop_after=[0] * 10)
    with pytest.raises(Unavailable):
        list(JobHandle(fake, "j").watch(max_reconnects=3))
    assert len(fake.calls) == 4


def test_result_follows_the_stream_then_reads_the_record_once(monkeypatch):
    monkeypatch.setattr("pruning_client.job.time.sleep", lambda s: pytest.fail("result() must not poll"))
    fake = FakeClient(EVENTS, states=[pb.JOB_STATE_SUCCEEDED])
    result = JobHandle(fake, "j").result(timeout=60)
    assert result.pruned_accuracy == pytest.approx(0.97)
    assert fake.calls == [""] and fake.gets == 1
    assert 0 < fake.timeouts[0] <= 60  # the stream carries the deadline


def test_result_reconnects_by_last_event_id_on_unavailable():
    fake = FakeClient(EVENTS, drop_after=[2, 3], states=[pb.JOB_STATE_SUCCEEDED])
    assert JobHandle(fake, "j").result().pruned_accuracy == pytest.approx(0.97)
    assert fake.calls == ["", "2-0", "5-0"] and fake.gets == 1


def test_result_gives_up_after_max_reconnects():
    fake = FakeClient(EVENTS, drop_after=[0] * 30)
    with pytest.raises(Unavailable) as raised:
        JobHandle(fake, "j").wait(max_reconnects=2)
    assert len(fake.calls) == 3 and raised.value.code.name == "UNAVAILABLE"


def test_wait_does_not_consume_the_events_watch_yields():
    fake = FakeClient(EVENTS, states=[pb.JOB_STATE_SUCCEEDED])
    handle = JobHandle(fake, "j")
    handle.wait()
    assert [e.id for e in handle.watch()] == [e.id for e in EVENTS]


def test_a_stream_that_ends_early_is_settled_by_the_record():
    fake = FakeClient(EVENTS[:4], states=[pb.JOB_STATE_SUCCEEDED])
    assert JobHandle(fake, "j").wait().state == pb.JOB_STATE_SUCCEEDED
    assert fake.calls == [""] and fake.gets == 1


@pytest.mark.parametrize("state, error", [(pb.JOB_STATE_FAILED, JobFailed), (pb.JOB_STATE_CANCELLED, JobCancelled)])
def test_result_raises_for_unsuccessful_jobs(state, error):
    fake = FakeClient(events_ending(state), states=[state])
    with pytest.raises(error) as raised:
        JobHandle(fake, "j").result(timeout=1)
    assert raised.value.job.state == state
    if state == pb.JOB_STATE_FAILED:
        assert raised.value.job_code == 3 and raised.value.exit_code == 8


def test_result_times_out_while_the_job_runs():
    with pytest.raises(JobTimeout):
        JobHandle(FakeClient([]), "j").result(timeout=0)


def test_result_times_out_when_the_stream_hits_its_deadline():
    fake = FakeClient(EVENTS[:3], hang=True)
    with pytest.raises(JobTimeout) as raised:
        JobHandle(fake, "j").result(timeout=0.05)
    assert str(raised.value) == "job j still RUNNING after 0.05 s" and raised.value.exit_code == 10
    assert fake.calls == [""] and fake.gets == 1


def test_a_job_that_ended_by_the_deadline_is_not_a_timeout():
    fake = FakeClient(EVENTS[:3], hang=True, states=[pb.JOB_STATE_SUCCEEDED])
    assert JobHandle(fake, "j").result(timeout=0.05).pruned_accuracy == pytest.approx(0.97)


def test_done_is_one_get_job_and_its_terminal_record_is_reused():
    fake = FakeClient([], states=[pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED])
    handle = JobHandle(fake, "j")
    assert handle.done() is False and fake.gets == 1
    assert handle.done() is True and fake.gets == 2
    assert handle.result().pruned_accuracy == pytest.approx(0.97)
    assert fake.gets == 2 and fake.calls == []


def test_result_is_typed_and_keeps_the_raw_proto():
    result = JobHandle(FakeClient(EVENTS, states=[pb.JOB_STATE_SUCCEEDED]), "j").result()
    assert result.pruned_accuracy == pytest.approx(0.97)
    assert result.model_artifact_id == "a" * 64 and result.raw.artifacts[0].format == "keras"


# -- downloads ---------------------------------------------------------------------------------


class DownloadClient(FakeClient):
    ARTIFACTS = [
        pb.Artifact(id="1" * 64, format="keras", filename="pruned_0.keras"),
        pb.Artifact(id="2" * 64, format="saved_model", filename="pruned_1.zip"),
        pb.Artifact(id="3" * 64, format="tflite", filename="pruned_2.tflite"),
        pb.Artifact(id="4" * 64, format="tflite_int8", filename="pruned_3.int8.tflite"),
        pb.Artifact(id="5" * 64, format="h5", filename=""),
    ]

    def __init__(self):
        super().__init__(EVENTS)
        self.downloads = []

    def get_job(self, job_id):
        job = pb.Job(id=job_id, state=pb.JOB_STATE_SUCCEEDED)
        job.result.artifacts.extend(self.ARTIFACTS)
        return job

    def download(self, artifact_id, dest):
        self.downloads.append((artifact_id, pathlib.Path(dest)))
        return pathlib.Path(dest)


@pytest.mark.parametrize(
    "fmt, artifact_id, name",
    [
        (None, "1" * 64, "pruned-j.keras"),
        ("saved_model", "2" * 64, "pruned-j.zip"),
        ("saved_model.zip", "2" * 64, "pruned-j.zip"),
        ("TFLITE", "3" * 64, "pruned-j.tflite"),
        ("tflite_int8", "4" * 64, "pruned-j.int8.tflite"),
        ("h5", "5" * 64, "pruned-j.h5"),  # no file name: the format names the suffix
    ],
)
def test_download_into_a_directory_names_the_file_from_the_artifact(tmp_path, fmt, artifact_id, name):
    fake = DownloadClient()
    assert JobHandle(fake, "j").download(tmp_path, fmt) == tmp_path / name
    assert fake.downloads == [(artifact_id, tmp_path / name)]


def test_download_to_a_file_path_keeps_it(tmp_path):
    fake = DownloadClient()
    assert JobHandle(fake, "j").download(tmp_path / "model.bin", fmt="keras") == tmp_path / "model.bin"


@pytest.mark.parametrize(
    "name, artifact_id",
    [
        ("m.tflite", "3" * 64),
        ("m.int8.tflite", "4" * 64),
        ("m.zip", "2" * 64),
        ("m.hdf5", "5" * 64),
        ("m.bin", "1" * 64),
    ],
)
def test_download_to_a_file_name_gets_the_export_its_suffix_names(tmp_path, name, artifact_id):
    fake = DownloadClient()
    assert JobHandle(fake, "j").download(tmp_path / name) == tmp_path / name
    assert fake.downloads == [(artifact_id, tmp_path / name)]


def test_download_to_a_file_name_of_a_format_the_job_lacks_is_refused(tmp_path):
    fake = DownloadClient()
    fake.ARTIFACTS = fake.ARTIFACTS[:2]  # keras, saved_model
    with pytest.raises(
        NotFound, match=r"m.h5 names a .h5 file, but job j has no h5 export \(it has: keras, saved_model\)"
    ):
        JobHandle(fake, "j").download(tmp_path / "m.h5")
    assert not fake.downloads


def test_download_of_a_format_the_job_did_not_export(tmp_path):
    fake = DownloadClient()
    fake.ARTIFACTS = fake.ARTIFACTS[:1]
    with pytest.raises(NotFound):
        JobHandle(fake, "j").download(tmp_path, fmt="h5")
    with pytest.raises(ValueError, match="unknown export format"):
        JobHandle(fake, "j").download(tmp_path, fmt="onnx")


def test_download_all_writes_every_artifact_to_a_distinct_file(tmp_path):
    fake = DownloadClient()
    paths = JobHandle(fake, "j").download_all(tmp_path / "out")
    assert [p.name for p in paths] == [
        "pruned-j.keras",
        "pruned-j.zip",
        "pruned-j.tflite",
        "pruned-j.int8.tflite",
        "pruned-j.h5",
    ]
    assert [a for a, _ in fake.downloads] == [a.id for a in DownloadClient.ARTIFACTS]
    assert {p.parent for p in paths} == {tmp_path / "out"}  # made by the client's download, as needed


def test_a_watch_refused_for_want_of_a_slot_is_retried():
    """RESOURCE_EXHAUSTED on WatchJob (the tenant's watches all taken) is a wait, not a failed
    result: the handle tries again as after a dropped stream."""
    from pruning_client import ResourceExhausted

    class Busy(FakeClient):
        refusals = 2

        def watch_events(self, job_id, after, *, timeout=None):
            if self.refusals:
                self.refusals -= 1
                self.calls.append(after)
                raise ResourceExhausted("256 concurrent watches of this tenant, the most allowed")
            yield from super().watch_events(job_id, after, timeout=timeout)

    fake = Busy(EVENTS)
    assert [e.id for e in JobHandle(fake, "j").watch()] == [e.id for e in EVENTS]
    assert fake.calls == ["", "", ""]


def test_watch_gives_up_after_its_timeout_with_the_events_seen_yielded():
    """A pipeline bounds `pruning watch` / `submit --wait` (exit 10) as `result` was."""
    fake = FakeClient(EVENTS[:3], hang=True)
    seen = []
    with pytest.raises(JobTimeout) as raised:
        for e in JobHandle(fake, "j").watch(timeout=0.05):
            seen.append(e.id)
    assert seen == [e.id for e in EVENTS[:3]] and raised.value.job is not None and raised.value.exit_code == 10


def test_the_cli_watch_and_submit_take_a_wait_timeout(monkeypatch, capsys):
    import json

    from pruning_client import cli as cli_module
    from pruning_client.cli import run

    class Client:
        def __init__(self, target, **options):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def job(self, job_id):
            return JobHandle(FakeClient(EVENTS[:3], hang=True), job_id)

    monkeypatch.setattr(cli_module, "Client", Client)
    assert run(["watch", "j" * 24, "--wait-timeout", "0.05", "--json"]) == 10
    out, err = capsys.readouterr()
    assert [json.loads(line)["id"] for line in out.splitlines()] == [e.id for e in EVENTS[:3]]  # events only
    assert json.loads(err.splitlines()[0])["error"] == "JobTimeout"
    assert run(["submit", "--model", "a" * 64, "--wait-timeout", "5"]) == 2  # needs --wait
    capsys.readouterr()
    assert run(["download", "j" * 24, "--wait-timeout", "0.05", "-o", "never/"]) == 10  # a job that does not end
    assert "waiting for job" in capsys.readouterr().err
    assert run(["download", "a" * 64, "--wait-timeout", "5"]) == 2  # an artifact: nothing to wait for


def test_the_typed_result_keeps_each_layers_target_and_says_one_step_so():
    from pruning_client.results import PruneResult

    raw = pb.PruneResult()
    raw.layers.add(name="d", type="Dense", pruned=True, weights=10, nonzero=2, sparsity=0.8, target_sparsity=0.75)
    result = PruneResult.from_proto(raw)
    assert result.layers[0].target_sparsity == 0.75
    assert result.to_dict()["layers"][0]["target_sparsity"] == 0.75
