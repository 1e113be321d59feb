"""AsyncClient's sweeps against a fake SweepService stub: create, get, list by pages, watch
with reconnects, result and its outcomes, cancel; and the deadline of an async upload."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import grpc.aio
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import JobCancelled, JobFailed, JobTimeout, NotFound, job_spec, sweep_spec
from pruning_client.aio import AsyncClient, AsyncSweepHandle
from pruning_client.client import UPLOAD_FLOOR_RATE

SWEEP = "5" * 24


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="from the fake")


def snapshot(version: int, state: int = pb.JOB_STATE_RUNNING, **fields: object) -> pb.Sweep:
    trials = [pb.Trial(index=i, sparsity=0.5 + 0.1 * i, state=state) for i in range(version)]
    return pb.Sweep(id=SWEEP, version=version, state=state, trials=trials, **fields)


class FakeCall:
    """A WatchSweep call: yields ``sweeps``, then raises ``error`` (if any) or hangs."""

    def __init__(self, sweeps: list[pb.Sweep], error: grpc.RpcError | None, hang: bool) -> None:
        self.sweeps, self.error, self.hang, self.cancelled = sweeps, error, hang, False

    async def _run(self):
        for sweep in self.sweeps:
            yield sweep
        if self.error is not None:
            raise self.error
        if self.hang:
            await asyncio.sleep(3600)

    def __aiter__(self):
        return self._run()

    def cancel(self) -> None:
        self.cancelled = True


class FakeSweepStub:
    """Answers from ``history`` (snapshots by version); each WatchSweep call serves the next of
    ``watches``: (how many snapshots after the requested version, then error or None)."""

    def __init__(self, history: list[pb.Sweep], watches=(), hang: bool = False) -> None:
        self.history, self.watches, self.hang = history, list(watches), hang
        self.requests: list[object] = []
        self.timeouts: list[float | None] = []
        self.calls: list[FakeCall] = []

    async def CreateSweep(self, request, timeout=None, metadata=()):
        self.requests.append(request)
        self.timeouts.append(timeout)
        return self.history[0]

    async def GetSweep(self, request, timeout=None, metadata=()):
        self.requests.append(request)
        if request.sweep_id != SWEEP:
            raise rpc_error(grpc.StatusCode.NOT_FOUND)
        return self.history[-1]

    async def CancelSweep(self, request, timeout=None, metadata=()):
        self.requests.append(request)
        return snapshot(self.history[-1].version + 1, pb.JOB_STATE_CANCELLED)

    async def ListSweeps(self, request, timeout=None, metadata=()):
        self.requests.append(request)
        start = int(request.page_token or 0)
        end = start + request.page_size
        token = str(end) if end < len(self.history) else ""
        return pb.ListSweepsResponse(sweeps=self.history[start:end], next_page_token=token)

    def WatchSweep(self, request, metadata=()):
        self.requests.append(request)
        after = [s for s in self.history if s.version > request.after_version]
        count, error = self.watches.pop(0) if self.watches else (len(after), None)
        call = FakeCall(after[:count], error, self.hang)
        self.calls.append(call)
        return call


def run_with(stub: FakeSweepStub, work):
    async def main():
        async with AsyncClient("127.0.0.1:1") as client:  # never connects: the stub is replaced
            client.sweep_stub = stub
            return await work(client)

    return asyncio.run(main())


HISTORY = [snapshot(1), snapshot(2), snapshot(3), snapshot(4, pb.JOB_STATE_SUCCEEDED, message="every sparsity tried")]


def test_create_sweep_sends_the_spec_labels_and_a_key_with_the_timeout():
    stub = FakeSweepStub(HISTORY)
    spec = sweep_spec(job_spec("ab" * 32), sparsities=[0.5, 0.8], parallel_trials=1)

    async def work(client):
        return await client.create_sweep(spec, labels={"t": "x"}, idempotency_key="k1")

    handle = run_with(stub, work)
    assert isinstance(handle, AsyncSweepHandle) and handle.id == SWEEP and handle.last == HISTORY[0]
    request = stub.requests[0]
    assert request.spec == spec and dict(request.labels) == {"t": "x"} and request.idempotency_key == "k1"
    assert stub.timeouts == [30.0]
    assert repr(handle) == f"AsyncSweepHandle({SWEEP!r})"


def test_watch_reconnects_after_unavailable_and_resumes_after_the_last_version():
    stub = FakeSweepStub(HISTORY, watches=[(2, rpc_error(grpc.StatusCode.UNAVAILABLE))])

    async def work(client):
        handle = client.sweep(SWEEP)
        return handle, [s.version async for s in handle.watch(reconnect_delay=0)]

    handle, versions = run_with(stub, work)
    assert versions == [1, 2, 3, 4] and handle.last == HISTORY[-1]
    assert [r.after_version for r in stub.requests] == [0, 2]
    assert all(call.cancelled for call in stub.calls)


def test_watch_raises_other_errors_as_sdk_exceptions():
    stub = FakeSweepStub(HISTORY, watches=[(0, rpc_error(grpc.StatusCode.NOT_FOUND))])

    async def work(client):
        return [s async for s in client.sweep(SWEEP).watch()]

    with pytest.raises(NotFound):
        run_with(stub, work)


def test_result_returns_the_ended_sweep():
    stub = FakeSweepStub(HISTORY)
    done = run_with(stub, lambda client: client.sweep(SWEEP).result(timeout=10))
    assert done == HISTORY[-1] and len(stub.calls) == 1


@pytest.mark.parametrize(("state", "error"), [(pb.JOB_STATE_CANCELLED, JobCancelled), (pb.JOB_STATE_FAILED, JobFailed)])
def test_result_of_a_sweep_that_did_not_succeed(state, error):
    stub = FakeSweepStub([snapshot(1), snapshot(2, state)])
    with pytest.raises(error):
        run_with(stub, lambda client: client.sweep(SWEEP).result())


def test_result_times_out_while_the_stream_is_silent():
    stub = FakeSweepStub(HISTORY[:2], hang=True)
    with pytest.raises(JobTimeout) as timed_out:
        run_with(stub, lambda client: client.sweep(SWEEP).result(timeout=0.05))
    assert isinstance(timed_out.value, TimeoutError) and timed_out.value.sweep == HISTORY[1]
    assert stub.calls[0].cancelled


def test_cancel_and_get_keep_the_last_snapshot():
    stub = FakeSweepStub(HISTORY[:2])

    async def work(client):
        handle = client.sweep(SWEEP)
        cancelled = await handle.cancel()
        last = handle.last
        now = await handle.get()
        return cancelled, last, now

    cancelled, last, now = run_with(stub, work)
    assert cancelled.state == pb.JOB_STATE_CANCELLED and last == cancelled and now == HISTORY[1]
    assert [type(r) for r in stub.requests] == [pb.CancelSweepRequest, pb.GetSweepRequest]


def test_list_sweeps_follows_the_pages():
    stub = FakeSweepStub(HISTORY)

    async def work(client):
        return [s.version async for s in client.list_sweeps(state=pb.JOB_STATE_RUNNING, page_size=3)]

    assert run_with(stub, work) == [1, 2, 3, 4]
    assert [(r.page_token, r.state) for r in stub.requests] == [("", pb.JOB_STATE_RUNNING), ("3", pb.JOB_STATE_RUNNING)]


def test_an_async_upload_gets_the_timeout_plus_the_file_at_the_floor_rate(tmp_path):
    data = b"x" * (3 * 1024 * 1024)
    path = tmp_path / "model.keras"
    path.write_bytes(data)
    got: list[float | None] = []

    class Call:  # the blocking channel's call (AsyncClient._uploads), done at once
        def __init__(self, requests, timeout):
            got.append(timeout)
            for _ in requests:
                pass
            self.artifact = pb.Artifact(id=hashlib.sha256(data).hexdigest())

        def add_done_callback(self, callback):
            callback(self)

        def result(self):
            return self.artifact

        def cancel(self):
            return False

    class Calls:
        class upload_model:  # the attribute it stands for
            @staticmethod
            def future(requests, timeout=None, metadata=()):
                return Call(requests, timeout)

    async def work():
        async with AsyncClient("127.0.0.1:1", timeout=5) as client:
            client._upload_calls = Calls()
            return await client.upload_model(path)

    assert asyncio.run(work()).id == hashlib.sha256(data).hexdigest()
    assert got == [pytest.approx(5 + len(data) / UPLOAD_FLOOR_RATE)]
