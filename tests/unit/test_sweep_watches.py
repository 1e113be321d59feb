"""WatchSweep's fan-out: one read per interval for every stream of a sweep, each stream sees
every version after its own, in order, and ends with the sweep."""

from __future__ import annotations

import asyncio

from pruning.v1 import pruning_pb2 as pb
from pruning_server.sweeps import SweepWatches

STREAMS = 100
VERSIONS = 8


class Sweep:
    """A sweep that moves on one version every few reads, then ends."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self, tenant: str, sweep_id: str) -> pb.Sweep:
        self.reads += 1
        version = min(VERSIONS, 1 + self.reads // 2)
        state = pb.JOB_STATE_SUCCEEDED if version == VERSIONS else pb.JOB_STATE_RUNNING
        return pb.Sweep(id=sweep_id, version=version, state=state)


async def _collect(watches: SweepWatches, after: int = 0, tenant: str = "t") -> list[int]:
    return [s.version async for s in watches.follow(tenant, "s1", after)]


def test_many_streams_share_one_reader_and_miss_nothing():
    sweep = Sweep()
    watches = SweepWatches(sweep.read, interval_s=0.01)

    async def scenario():
        seen = await asyncio.gather(*(_collect(watches, after=i % 3) for i in range(STREAMS)))
        for i, versions in enumerate(seen):
            assert versions == list(range(i % 3 + 1, VERSIONS + 1))
        late = await _collect(watches, after=VERSIONS)  # after the end: one read, nothing new
        assert late == []

    asyncio.run(scenario())
    # One reader for all the streams: about two reads per version, not a hundred.
    assert sweep.reads <= 2 * VERSIONS + 2, sweep.reads
    assert not watches._polls


def test_the_reader_stops_when_the_last_stream_goes():
    sweep = Sweep()
    watches = SweepWatches(lambda t, s: _running(sweep), interval_s=0.01)

    async def scenario():
        streams = [asyncio.ensure_future(_collect(watches)) for _ in range(5)]
        await asyncio.sleep(0.1)
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        await asyncio.sleep(0.05)
        reads = sweep.reads
        await asyncio.sleep(0.1)
        assert sweep.reads == reads  # no reader left polling
        assert not watches._polls

    asyncio.run(scenario())


async def _running(sweep: Sweep) -> pb.Sweep:
    sweep.reads += 1
    return pb.Sweep(id="s1", version=1, state=pb.JOB_STATE_RUNNING)


def test_a_failed_read_reaches_every_stream():
    async def gone(tenant: str, sweep_id: str) -> pb.Sweep:
        raise LookupError("sweep deleted")

    watches = SweepWatches(gone, interval_s=0.01)

    async def scenario():
        results = await asyncio.gather(*(_collect(watches) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, LookupError) for r in results)
        assert not watches._polls

    asyncio.run(scenario())


def test_tenants_never_share_a_reader():
    tenants = ("a", "b")
    asked = []

    async def read(tenant: str, sweep_id: str) -> pb.Sweep:
        asked.append(tenant)
        return pb.Sweep(id=sweep_id, version=1, state=pb.JOB_STATE_SUCCEEDED)

    watches = SweepWatches(read, interval_s=0.01)

    async def scenario():
        got = await asyncio.gather(*(_collect(watches, tenant=t) for t in tenants))
        assert got == [[1], [1]]

    asyncio.run(scenario())
    assert sorted(asked) == sorted(tenants)
