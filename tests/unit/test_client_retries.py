"""The SDK sends again, after UNAVAILABLE, the calls that are safe to repeat (reads, cancels,
creates under an idempotency key) and no other, against a real gRPC server on a free port
whose handlers answer UNAVAILABLE first."""

from __future__ import annotations

import collections
from concurrent import futures

import grpc
import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_client import Client, Unavailable


class Flaky:
    """Answers each method UNAVAILABLE the first time, then for real; counts the calls."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def _first_fails(self, name: str, context: grpc.ServicerContext) -> None:
        self.calls[name] += 1
        if self.calls[name] == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the job store is down for the moment")


class Jobs(pb_grpc.PruningServiceServicer, Flaky):
    def ListArtifacts(self, request, context):
        self._first_fails("ListArtifacts", context)
        return pb.ListArtifactsResponse(artifacts=[pb.Artifact(id="a" * 64)])

    def GetArtifact(self, request, context):
        self._first_fails("GetArtifact", context)
        return pb.Artifact(id=request.artifact_id)

    def DeleteArtifact(self, request, context):
        self._first_fails("DeleteArtifact", context)
        return pb.Artifact(id=request.artifact_id)


class Sweeps(pb_grpc.SweepServiceServicer, Flaky):
    def GetSweep(self, request, context):
        self._first_fails("GetSweep", context)
        return pb.Sweep(id=request.sweep_id)

    def CreateSweep(self, request, context):
        self._first_fails("CreateSweep", context)
        assert request.idempotency_key  # what makes a second try safe
        return pb.Sweep(id="s" * 24)


@pytest.fixture
def flaky():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    jobs, sweeps = Jobs(), Sweeps()
    pb_grpc.add_PruningServiceServicer_to_server(jobs, server)
    pb_grpc.add_SweepServiceServicer_to_server(sweeps, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", jobs, sweeps
    finally:
        server.stop(0)


def test_calls_safe_to_repeat_are_sent_again_after_unavailable(flaky):
    target, jobs, sweeps = flaky
    with Client(target) as client:
        assert client.get_sweep("s" * 24).id == "s" * 24
        assert client.create_sweep(pb.SweepSpec(sparsities=[0.5])).id == "s" * 24
        assert [a.id for a in client.list_artifacts()] == ["a" * 64]
        assert client.get_artifact("b" * 64).id == "b" * 64
    assert sweeps.calls == {"GetSweep": 2, "CreateSweep": 2} and jobs.calls["ListArtifacts"] == 2
    assert jobs.calls["GetArtifact"] == 2


def test_a_delete_is_not_sent_again(flaky):
    target, jobs, _ = flaky
    with Client(target) as client, pytest.raises(Unavailable):
        client.delete_artifact("a" * 64)
    assert jobs.calls["DeleteArtifact"] == 1
