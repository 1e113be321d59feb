"""A bounded pipeline from an event loop to a blocking writer.

An upload's chunks arrive on the event loop; hashing them and writing them to disk or to an
object store blocks. :class:`WritePipeline` hands the chunks to one background thread through
a queue of at most ``depth`` chunks, so receiving the next chunk overlaps with hashing and
writing the previous ones, memory stays bounded (``depth`` chunks), and the hot path costs the
loop no thread hop per chunk (a full queue makes the receiver wait, which is back-pressure on
the client through gRPC's flow control).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable

_STOP = object()


class WritePipeline:
    """Feeds ``write`` from a thread of its own. Create it on the event loop."""

    def __init__(self, write: Callable[[bytes], None], depth: int = 8):
        self._write = write
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(depth)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._abandoned = False
        self._finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.accepted = 0  # bytes handed to the pipeline so far
        self._thread = threading.Thread(target=self._run, name="write-pipeline", daemon=True)
        self._thread.start()

    def _release(self) -> None:
        self._slots.release()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not _STOP:
                try:
                    if self._error is None and not self._abandoned:
                        self._write(item)  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001 - handed to the loop by drain()
                    self._error = exc
                finally:
                    try:
                        self._loop.call_soon_threadsafe(self._release)
                    except RuntimeError:
                        pass  # the loop is closed: nobody waits any more
        finally:
            self._finished.set_result(None)

    async def write(self, data: bytes) -> None:
        """Queues ``data``; waits while ``depth`` chunks are still unwritten."""
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        self.accepted += len(data)
        self._queue.put(data)

    async def drain(self) -> None:
        """Waits until every queued chunk is written; raises the writer's error if any."""
        self._queue.put(_STOP)
        await asyncio.wrap_future(self._finished)
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Stops: chunks still queued are dropped and the thread is gone on return (it may
        finish the one chunk it is writing), so the writer can be discarded safely."""
        self._abandoned = True
        if not self._finished.done():
            self._queue.put(_STOP)
            self._thread.join()
