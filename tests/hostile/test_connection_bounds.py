"""What clients open is bounded beyond the per-kind caps: calls in all per server process
(gRPC refuses more with RESOURCE_EXHAUSTED), calls per connection (more wait for a free
stream), and connections left idle (closed; a client reconnects on its next call)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hostile import hostile_server, tiny  # noqa: F401 - fixture

from pruning.v1 import pruning_pb2 as pb
from pruning.v1 import pruning_pb2_grpc as pb_grpc
from pruning_client import Client, job_spec

pytestmark = pytest.mark.integration
META = (("x-api-key", "key-a"),)


def test_calls_connections_and_idle_connections_are_bounded(env, tiny):  # noqa: F811
    server = hostile_server(
        env, "connection-bounds", max_concurrent_rpcs=4, max_streams_per_connection=2, connection_idle_s=0.5
    )
    try:
        with Client(server.target, api_key="key-a", timeout=30) as client:
            job = client.submit(
                job_spec(client.upload_model(tiny["keras"]).id, dataset=client.upload_dataset(tiny["data"]).id)
            )

        async def scenario() -> None:
            request = pb.WatchJobRequest(job_id=job.id)
            # A connection each (channels to one target otherwise share one).
            own = [("grpc.use_local_subchannel_pool", 1)]
            channels = [grpc.aio.insecure_channel(server.target, options=own) for _ in range(3)]
            try:
                stubs = [pb_grpc.PruningServiceStub(c) for c in channels]
                # Two streams on one connection; a third waits for one of them to end.
                first, second = (stubs[0].WatchJob(request, metadata=META) for _ in range(2))
                await first.read(), await second.read()
                third = stubs[0].WatchJob(request, metadata=META)
                waiting = asyncio.ensure_future(third.read())
                await asyncio.sleep(1.0)
                assert not waiting.done(), "a third stream on a connection of two"
                first.cancel()
                await asyncio.wait_for(waiting, 10)
                # Calls in all: two more on other connections make four; a fifth is refused.
                others = [stubs[1].WatchJob(request, metadata=META), stubs[2].WatchJob(request, metadata=META)]
                for call in others:
                    await call.read()
                extra = stubs[1].WatchJob(request, metadata=META)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await extra.read()
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                for call in [second, third, *others]:
                    call.cancel()
                await asyncio.sleep(0.3)
                # A connection left idle is closed by the server, and the next call reconnects.
                idle = grpc.aio.insecure_channel(server.target, options=own)
                try:
                    stub = pb_grpc.PruningServiceStub(idle)
                    await stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=META)
                    assert idle.get_state() == grpc.ChannelConnectivity.READY
                    await asyncio.sleep(2.0)
                    assert idle.get_state() == grpc.ChannelConnectivity.IDLE
                    assert (await stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=META)).id == job.id
                finally:
                    await idle.close()
            finally:
                for channel in channels:
                    await channel.close()

        asyncio.run(scenario())
    finally:
        server.stop()
