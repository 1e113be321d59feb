"""WatchJob's live half: one blocking reader per server process, fanned out to the streams.

Every watched job's event stream is followed by a single ``XREAD BLOCK`` on one dedicated
Redis connection, so an idle watch costs a small queue, not a pooled connection: a tenant
holding hundreds of watches open cannot starve the other RPCs of connections. A watcher
registers first and then replays the stream itself (a short ``XRANGE`` on the pool), keeping
only events past the last id it yielded, so it misses nothing and sees nothing twice.

A new job is added to the blocking read at once: registration appends to a small wake-up
stream of this process, which the read also follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

import redis

from pruning.v1 import pruning_pb2 as pb
from pruning_core.store import TERMINAL, AsyncJobStore, decode_event

log = logging.getLogger(__name__)
_RETRY_S = 0.5
REPLAY_BATCH = 1000  # AsyncJobStore.read_events reads at most this many at once


def event_key(event_id: str) -> tuple[int, int]:
    """Stream ids ("ms-seq") in their order."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class _Watcher:
    def __init__(self, job_id: str, size: int):
        self.job_id = job_id
        self.queue: asyncio.Queue[pb.JobEvent | BaseException] = asyncio.Queue(size)
        self.overflowed = False  # events were dropped: catch up from the stream

    def deliver(self, item: pb.JobEvent | BaseException) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


class WatchHub:
    """Follows the event streams of every job watched in this process with one reader.

    Args:
        store: the server's store (pooled connections) for replays and state checks.
        reader: a store on its own single connection, used only by the blocking read.
        block_ms: how long one blocking read waits.
        buffer: events held per watcher before it falls back to reading the stream itself.
    """

    def __init__(self, store: AsyncJobStore, reader: AsyncJobStore, block_ms: int, buffer: int):
        self.store, self.reader, self.block_ms, self.buffer = store, reader, block_ms, buffer
        self._watchers: dict[str, set[_Watcher]] = {}
        self._cursors: dict[str, str] = {}  # job id -> last stream id the reader saw
        self._wake = store.keys.watch_wake(os.urandom(8).hex())
        self._wake_cursor = "0-0"
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="watch-hub")

    async def stop(self) -> None:
        """Ends the reader: woken through its own stream rather than cancelled mid-read (a
        cancelled blocking read can hold the connection until the read times out)."""
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self.store.wake(self._wake)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.block_ms / 1000 + 1)
            except Exception:  # noqa: BLE001 - Redis gone or the read stuck: cancel it
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(self._task, 1)
        with contextlib.suppress(Exception):
            await self.store.redis.delete(self._wake)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader.redis.aclose(), 1)

    async def _register(self, watcher: _Watcher, after: str) -> None:
        new = watcher.job_id not in self._watchers
        self._watchers.setdefault(watcher.job_id, set()).add(watcher)
        if new:
            self._cursors[watcher.job_id] = after or "0-0"
            await self.store.wake(self._wake)

    def _unregister(self, watcher: _Watcher) -> None:
        watchers = self._watchers.get(watcher.job_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[watcher.job_id]
            self._cursors.pop(watcher.job_id, None)

    async def _run(self) -> None:
        while not self._stopping:
            cursors = dict(self._cursors)
            try:
                replies = await self.reader.read_streams(cursors, self._wake, self._wake_cursor, self.block_ms)
            except asyncio.CancelledError:
                raise
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("watch reader: %s; retrying", exc)
                for watchers in self._watchers.values():
                    for watcher in watchers:
                        watcher.deliver(exc)
                await asyncio.sleep(_RETRY_S)
                continue
            except Exception:
                log.exception("watch reader failed; retrying")
                await asyncio.sleep(_RETRY_S)
                continue
            # No await from here to the end of the loop body: registration sees either all of
            # a batch delivered and the cursor moved, or neither.
            for job_id, entries in replies.items():
                if job_id is None:
                    self._wake_cursor = entries[-1][0]
                    continue
                if job_id not in self._cursors:
                    continue
                events = [decode_event(i, f) for i, f in entries]
                self._cursors[job_id] = events[-1].id
                for watcher in self._watchers.get(job_id, ()):
                    for event in events:
                        watcher.deliver(event)

    async def follow(self, tenant: str, job_id: str, after: str, recheck_s: float) -> AsyncIterator[pb.JobEvent]:
        """The job's events after ``after`` ('' = all), then live ones, until a terminal state
        change (or the job is found terminal with nothing left to read)."""
        watcher = _Watcher(job_id, self.buffer)
        try:
            await self._register(watcher, after)
            # check: once after the first replay (a job that had already ended, watched from its
            # last event or past it), and after each recheck_s without events.
            last, replay, check = after, True, True
            while True:
                if replay or watcher.overflowed:
                    # Registered first, read second: what the reader delivers from now on is
                    # either in this read or in the queue (duplicates are skipped below).
                    replay, watcher.overflowed = False, False
                    watcher.queue = asyncio.Queue(self.buffer)
                    while True:
                        events = await self.store.read_events(job_id, last, block_ms=None)
                        for event in events:
                            last = event.id
                            yield event
                            if _terminal(event):
                                return
                        if len(events) < REPLAY_BATCH:
                            break
                if check:
                    # A job that ended with its last events already read (or trimmed) must not
                    # hold the stream open; one that ended with events left replays them.
                    check = False
                    replay = (await self.store.get(tenant, job_id)).state in TERMINAL
                    if replay and not await self.store.read_events(job_id, last, block_ms=None):
                        return
                    if replay:
                        continue
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), recheck_s)
                except TimeoutError:
                    check = True
                    continue
                if isinstance(item, BaseException):
                    raise item
                if last and event_key(item.id) <= event_key(last):
                    continue
                last = item.id
                yield item
                if _terminal(item):
                    return
        finally:
            self._unregister(watcher)


def _terminal(event: pb.JobEvent) -> bool:
    return event.WhichOneof("kind") == "state_change" and event.state_change.to in TERMINAL
