"""Clients that cancel a download or die in the middle of one leave no ERROR traceback in the
server's log (grpc.aio logged one per stream it could no longer write to: anyone could fill
the log), one INFO line each at most, and the server serves the next download."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
from hostile import hostile_server, npz_bytes

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_client import Client

pytestmark = pytest.mark.integration
HOLDER = """
import sys, time
import grpc
from pruning.v1 import pruning_pb2 as pb, pruning_pb2_grpc as pb_grpc
stub = pb_grpc.PruningServiceStub(grpc.insecure_channel(sys.argv[1]))
chunks = stub.DownloadArtifact(pb.DownloadArtifactRequest(artifact_id=sys.argv[2]), metadata=(("x-api-key", "key-a"),))
next(chunks)
print("reading", flush=True)
time.sleep(60)
"""


def test_gone_download_clients_log_no_traceback(env, tmp_path, caplog):
    server = hostile_server(env, "gone-clients")
    data = tmp_path / "big.npz"
    data.write_bytes(npz_bytes(n_train=300_000))  # 10 MiB: chunks in flight when the client goes
    try:
        with caplog.at_level(logging.INFO), Client(server.target, api_key="key-a", timeout=30) as client:
            artifact = client.upload_dataset(data)
            stub = pb_grpc.PruningServiceStub(client._channel)
            for i in range(30):
                chunks = stub.DownloadArtifact(
                    pb.DownloadArtifactRequest(artifact_id=artifact.id), metadata=client._metadata
                )
                next(chunks)
                time.sleep(0.001 * (i % 5))
                chunks.cancel()
            for _ in range(5):  # killed outright, mid-stream
                holder = subprocess.Popen(
                    [sys.executable, "-c", HOLDER, server.target, artifact.id], stdout=subprocess.PIPE, text=True
                )
                assert holder.stdout.readline().strip() == "reading"
                holder.kill()
                holder.wait()
            time.sleep(1)
            assert client.download(artifact.id, tmp_path / "again.npz").read_bytes() == data.read_bytes()
        grpc_records = [r for r in caplog.records if r.name.startswith("grpc")]
        assert not [r for r in grpc_records if r.levelno >= logging.WARNING or r.exc_info], [
            r.getMessage() for r in grpc_records
        ]
    finally:
        server.stop()
