"""The asyncio job handle against a fake async client: the same stream-following as the sync one."""

import asyncio
import time

import pytest
from test_job_handle import EVENTS, events_ending, finished

from pruning.v1 import pruning_pb2 as pb
from pruning_client import DeadlineExceeded, JobFailed, JobTimeout, Unavailable
from pruning_client.aio import AsyncJobHandle


class FakeAsyncClient:
    def __init__(self, events, drop_after=(), states=(pb.JOB_STATE_RUNNING,), hang=False):
        self.events, self.drop_after, self.states, self.hang = events, list(drop_after), list(states), hang
        self.calls, self.gets, self.closed = [], 0, 0

    async def watch_events(self, job_id, after, *, timeout=None):
        self.calls.append(after)
        start = 0 if not after else [e.id for e in self.events].index(after) + 1
        limit = self.drop_after.pop(0) if self.drop_after else None
        try:
            for i, e in enumerate(self.events[start:]):
                if limit is not None and i == limit:
                    raise Unavailable("connection reset")
                yield e
            if self.hang:
                assert timeout is not None
                await asyncio.sleep(timeout)
                raise DeadlineExceeded("deadline exceeded")
        finally:
            self.closed += 1

    async def get_job(self, job_id):
        self.gets += 1
        return finished(job_id, self.states.pop(0) if len(self.states) > 1 else self.states[0])


@pytest.fixture(autouse=True)
def no_delays(monkeypatch):
    monkeypatch.setattr("pruning_client.job.RECONNECT_DELAYS", (0,))


async def collect(events):
    return [e async for e in events]


def test_watch_reconnects_and_resumes():
    fake = FakeAsyncClient(EVENTS, drop_after=[3, 2])
    handle = AsyncJobHandle(fake, "j")
    assert [e.id for e in asyncio.run(collect(handle.watch()))] == [e.id for e in EVENTS]
    assert fake.calls == ["", "3-0", "5-0"] and handle.last_event_id == "8-0"
    assert fake.closed == 3


def test_result_follows_the_stream_then_reads_the_record_once():
    fake = FakeAsyncClient(EVENTS, drop_after=[4], states=[pb.JOB_STATE_SUCCEEDED])
    result = asyncio.run(AsyncJobHandle(fake, "j").result(timeout=60))
    assert result.pruned_accuracy == pytest.approx(0.97)
    assert fake.calls == ["", "4-0"] and fake.gets == 1


def test_result_of_a_failed_job():
    fake = FakeAsyncClient(events_ending(pb.JOB_STATE_FAILED), states=[pb.JOB_STATE_FAILED])
    with pytest.raises(JobFailed) as raised:
        asyncio.run(AsyncJobHandle(fake, "j").result())
    assert raised.value.job_code == 3


def test_result_times_out_at_the_stream_deadline():
    fake = FakeAsyncClient(EVENTS[:3], hang=True)
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        asyncio.run(AsyncJobHandle(fake, "j").result(timeout=0.05))
    assert time.monotonic() - started < 5 and fake.calls == [""] and fake.gets == 1


def test_done_and_the_reused_terminal_record():
    fake = FakeAsyncClient([], states=[pb.JOB_STATE_SUCCEEDED])

    async def run():
        handle = AsyncJobHandle(fake, "j")
        assert await handle.done()
        return await handle.wait()

    assert asyncio.run(run()).state == pb.JOB_STATE_SUCCEEDED
    assert fake.gets == 1 and fake.calls == []


def test_leaving_watch_early_closes_the_stream():
    fake = FakeAsyncClient(EVENTS)

    async def run():
        handle = AsyncJobHandle(fake, "j")
        events = handle.watch()
        async for e in events:
            if e.id == "3-0":
                break
        await events.aclose()
        return handle.last_event_id

    assert asyncio.run(run()) == "3-0" and fake.closed == 1
