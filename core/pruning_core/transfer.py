"""A bounded pipeline from an event loop to blocking consumers.

An upload's chunks arrive on the event loop; hashing them and writing them to disk or to an
object store blocks. :class:`WritePipeline` hands each chunk to every consumer ("sink": the
sha256, the file, the object store's multipart upload), each in a thread of its own behind a
queue. So receiving the next chunk overlaps with hashing and writing the previous ones, and
hashing overlaps with writing (``hashlib`` and file writes release the GIL). Memory stays
bounded: a chunk holds its slot until every sink is done with it, and at most ``depth`` slots
exist, holding at most ``max_bytes`` between them (one chunk larger than that goes alone), so
a client's larger chunks do not multiply what an upload holds. The hot path costs the loop no thread hop per chunk: a put on a queue, and a slot
taken (a full pipeline makes the receiver wait, which is back-pressure on the client through
gRPC's flow control).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Sequence

_STOP = object()

Buffer = bytes | memoryview  # an upload's chunk: a view of the received message (pruning.wire)
Sink = Callable[[Buffer], object]


class WritePipeline:
    """Feeds each of ``sinks`` from a thread of its own. Create it on the event loop."""

    def __init__(self, sinks: Sequence[Sink], depth: int = 8, max_bytes: int | None = None):
        self._sinks = list(sinks)
        if not self._sinks:
            raise ValueError("a pipeline needs at least one sink")
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(depth)
        self._max_bytes = max_bytes
        self._held = 0  # bytes of the chunks not finished by every sink
        self._sizes: collections.deque[int] = collections.deque()  # theirs, oldest first
        self._room = asyncio.Event()  # set when a chunk's bytes were given back
        self._queues: list[queue.SimpleQueue[object]] = [queue.SimpleQueue() for _ in self._sinks]
        self._done = [0] * len(self._sinks)  # chunks each sink has finished (written by its thread)
        self._released = 0  # slots given back: chunks every sink has finished
        self._error: BaseException | None = None  # the first sink's error: the others stop
        self._error_lock = threading.Lock()
        self._abandoned = False
        self._finished = [concurrent.futures.Future[None]() for _ in self._sinks]
        self.accepted = 0  # bytes handed to the pipeline so far
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"write-pipeline-{i}", daemon=True)
            for i in range(len(self._sinks))
        ]
        for thread in self._threads:
            thread.start()

    def _release(self) -> None:
        """On the loop: gives back the slots (and bytes) of the chunks every sink has finished."""
        while self._released < min(self._done):
            self._released += 1
            self._held -= self._sizes.popleft()
            self._room.set()
            self._slots.release()

    def _run(self, index: int) -> None:
        sink, items = self._sinks[index], self._queues[index]
        try:
            while (item := items.get()) is not _STOP:
                try:
                    if self._error is None and not self._abandoned:
                        sink(item)  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001 - handed to the loop by drain()
                    with self._error_lock:
                        self._error = self._error or exc
                finally:
                    self._done[index] += 1
                    # Only the sink that finished a chunk last wakes the loop (one wake-up per
                    # chunk, not one per sink): each checks after its own count, so the last to
                    # check sees every count and never misses (two may both wake it: harmless).
                    if self._done[index] <= min(self._done):
                        try:
                            self._loop.call_soon_threadsafe(self._release)
                        except RuntimeError:
                            pass  # the loop is closed: nobody waits any more
        finally:
            if not self._finished[index].done():
                self._finished[index].set_result(None)

    async def write(self, data: Buffer) -> None:
        """Queues ``data`` for every sink; waits while ``depth`` chunks are still unfinished."""
        if self._error is not None:
            raise self._error
        if self._abandoned:
            raise RuntimeError("the pipeline was abandoned")
        await self._slots.acquire()
        if self._max_bytes is not None:
            while self._held and self._held + len(data) > self._max_bytes:
                self._room.clear()
                await self._room.wait()
                if self._error is not None:
                    self._slots.release()
                    raise self._error
        self._held += len(data)
        self._sizes.append(len(data))
        self.accepted += len(data)
        for items in self._queues:
            items.put(data)

    def _stop(self) -> None:
        for items in self._queues:
            items.put(_STOP)

    async def drain(self) -> None:
        """Waits until every sink has taken every queued chunk; raises a sink's error if any.
        Cancelled (the client went away), the sinks go on: :meth:`abandon` stops them."""
        self._stop()
        # shielded: a cancellation must not mark the threads' futures done while they still run
        await asyncio.shield(asyncio.gather(*(asyncio.wrap_future(f) for f in self._finished)))
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Stops: chunks still queued are dropped and the threads are gone on return (each
        may finish the one chunk it is on), so the sinks' owner can be discarded safely. It
        blocks while a sink finishes its chunk: from the event loop, run it in a thread."""
        self._abandoned = True
        if any(thread.is_alive() for thread in self._threads):
            self._stop()
            for thread in self._threads:
                thread.join()
