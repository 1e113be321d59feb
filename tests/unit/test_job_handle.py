"""The job handle against a fake client: reconnects, resumes, maps outcomes."""

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import JobCancelled, JobFailed, JobHandle, JobTimeout, Unavailable


def event(n, **kind):
    return pb.JobEvent(id=f"{n}-0", **kind)


class FakeClient:
    def __init__(self, events, drop_after, states):
        self.events, self.drop_after, self.states = events, list(drop_after), list(states)
        self.calls = []

    def watch_events(self, job_id, after):
        self.calls.append(after)
        start = 0 if not after else [e.id for e in self.events].index(after) + 1
        limit = self.drop_after.pop(0) if self.drop_after else None
        for i, e in enumerate(self.events[start:]):
            if limit is not None and i == limit:
                raise Unavailable("connection reset")
            yield e

    def get_job(self, job_id):
        return pb.Job(id=job_id, state=self.states.pop(0) if len(self.states) > 1 else self.states[0])


EVENTS = [event(1, state_change=pb.StateChange(to=pb.JOB_STATE_QUEUED)),
          event(2, state_change=pb.StateChange(to=pb.JOB_STATE_RUNNING))] + [
    event(n, progress=pb.Progress(step=n)) for n in range(3, 8)] + [
    event(8, state_change=pb.StateChange(to=pb.JOB_STATE_SUCCEEDED))]


def test_watch_reconnects_and_resumes(monkeypatch):
    monkeypatch.setattr("pruning_client.job.RECONNECT_DELAYS", (0,))
    fake = FakeClient(EVENTS, drop_after=[3, 2], states=[pb.JOB_STATE_RUNNING])
    seen = [e.id for e in JobHandle(fake, "j").watch()]
    assert seen == [e.id for e in EVENTS]
    assert fake.calls == ["", "3-0", "5-0"]


def test_watch_gives_up_after_max_reconnects(monkeypatch):
    monkeypatch.setattr("pruning_client.job.RECONNECT_DELAYS", (0,))
    fake = FakeClient(EVENTS, drop_after=[0] * 10, states=[pb.JOB_STATE_RUNNING])
    with pytest.raises(Unavailable):
        list(JobHandle(fake, "j").watch(max_reconnects=3))
    assert len(fake.calls) == 4


@pytest.mark.parametrize("state, error", [(pb.JOB_STATE_FAILED, JobFailed), (pb.JOB_STATE_CANCELLED, JobCancelled)])
def test_result_raises_for_unsuccessful_jobs(state, error):
    with pytest.raises(error):
        JobHandle(FakeClient([], [], [state]), "j").result(timeout=1)


def test_result_times_out(monkeypatch):
    monkeypatch.setattr("pruning_client.job.time.sleep", lambda s: None)
    with pytest.raises(JobTimeout):
        JobHandle(FakeClient([], [], [pb.JOB_STATE_RUNNING]), "j").result(timeout=0)


def test_result_is_typed_and_keeps_the_raw_proto():
    class Done(FakeClient):
        def get_job(self, job_id):
            job = pb.Job(id=job_id, state=pb.JOB_STATE_SUCCEEDED)
            job.result.pruned.accuracy = 0.97
            job.result.artifacts.add(id="a" * 64, format="keras")
            return job

    result = JobHandle(Done([], [], []), "j").result()
    assert result.pruned_accuracy == pytest.approx(0.97)
    assert result.model_artifact_id == "a" * 64 and result.raw.artifacts[0].format == "keras"
