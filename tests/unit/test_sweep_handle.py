"""The blocking SweepHandle against a fake SweepService stub: result's timeout holds while the
stream is silent, and a reconnect resumes after the last version seen."""

from __future__ import annotations

import time

import grpc
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client import JobTimeout
from pruning_client.sweeps import SweepHandle

SWEEP = "6" * 24


class _Error(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "from the fake"


class _Call:
    """Yields ``sweeps``, then waits out its deadline (a silent stream) or raises ``error``."""

    def __init__(self, sweeps: list[pb.Sweep], timeout: float | None, error: grpc.StatusCode | None) -> None:
        self.sweeps, self.timeout, self.error = sweeps, timeout, error

    def __iter__(self):
        yield from self.sweeps
        if self.error is not None:
            raise _Error(self.error)
        assert self.timeout is not None, "a silent stream without a deadline would hang"
        time.sleep(self.timeout)
        raise _Error(grpc.StatusCode.DEADLINE_EXCEEDED)

    def cancel(self) -> None:
        pass


class _Stub:
    def __init__(self, calls: list[tuple[list[pb.Sweep], grpc.StatusCode | None]]) -> None:
        self.calls, self.requests = list(calls), []

    def WatchSweep(self, request, timeout=None, metadata=()):
        self.requests.append((request.after_version, timeout))
        sweeps, error = self.calls.pop(0) if self.calls else ([], None)
        return _Call(sweeps, timeout, error)


class _Client:
    def __init__(self, stub: _Stub) -> None:
        self.sweep_stub, self._metadata = stub, ()


def _sweep(version: int, state: int = pb.JOB_STATE_RUNNING) -> pb.Sweep:
    return pb.Sweep(id=SWEEP, version=version, state=state)


def test_result_times_out_while_the_stream_is_silent():
    stub = _Stub([([_sweep(1)], None)])
    started = time.monotonic()
    with pytest.raises(JobTimeout, match="still running after 0.5 s") as timed_out:
        SweepHandle(_Client(stub), SWEEP).result(timeout=0.5)
    assert isinstance(timed_out.value, TimeoutError) and timed_out.value.exit_code == 10  # as a job's
    assert timed_out.value.sweep is not None and timed_out.value.sweep.version == 1  # as last seen
    assert time.monotonic() - started < 3
    assert stub.requests[0][1] == pytest.approx(0.5, abs=0.1)  # the call's deadline is what is left


def test_result_resumes_after_a_reconnect_and_returns_the_end(monkeypatch):
    stub = _Stub([([_sweep(1), _sweep(2)], grpc.StatusCode.UNAVAILABLE), ([_sweep(3, pb.JOB_STATE_SUCCEEDED)], None)])
    monkeypatch.setattr(time, "sleep", lambda s: None)  # no reconnect delay in a unit test
    done = SweepHandle(_Client(stub), SWEEP).result(timeout=30)
    assert done.version == 3 and done.state == pb.JOB_STATE_SUCCEEDED
    assert [after for after, _ in stub.requests] == [0, 2]


def test_a_sweep_no_trial_of_which_succeeded_raises_with_the_first_failure_s_code():
    from pruning_client import JobFailed
    from pruning_client.sweeps import outcome

    sweep = pb.Sweep(id="s" * 24, state=pb.JOB_STATE_FAILED, message="no trial succeeded (2 failed)")
    sweep.trials.add(index=0, state=pb.JOB_STATE_FAILED, error=pb.JobError(code=3, message="model: broken"))
    sweep.trials.add(index=1, state=pb.JOB_STATE_FAILED, error=pb.JobError(code=13, message="other"))
    with pytest.raises(JobFailed) as failed:
        outcome(sweep)
    assert failed.value.job_code == 3 and failed.value.exit_code == 8 and "no trial succeeded" in str(failed.value)
