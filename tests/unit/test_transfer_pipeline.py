"""The upload pipeline (server) and the download fan-out (SDK): every sink sees every chunk
in order, memory stays within its bound, and an error stops the rest and reaches the caller."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import zlib

import pytest

from pruning.v1 import pruning_pb2 as pb
from pruning_client.client import PIPELINE, _Behind
from pruning_core.transfer import WritePipeline

CHUNKS = [bytes([i]) * (1000 + i) for i in range(50)]


def test_every_sink_gets_every_chunk_in_order_each_in_its_own_thread():
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    threads: dict[str, set[str]] = {"a": set(), "b": set()}
    digest = hashlib.sha256()

    def sink(name):
        def take(data):
            threads[name].add(threading.current_thread().name)
            seen[name].append(data)

        return take

    async def main():
        pipe = WritePipeline([sink("a"), sink("b"), digest.update], depth=4)
        for chunk in CHUNKS:
            await pipe.write(chunk)
        await pipe.drain()
        return pipe.accepted

    accepted = asyncio.run(main())
    assert seen["a"] == CHUNKS and seen["b"] == CHUNKS
    assert digest.hexdigest() == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    assert accepted == sum(map(len, CHUNKS))
    assert len(threads["a"]) == 1 and threads["a"] != threads["b"]
    assert threading.current_thread().name not in threads["a"] | threads["b"]


def test_a_slow_sink_holds_the_writer_to_depth_unfinished_chunks():
    depth = 3
    fast_done: list[int] = []
    slow_done: list[int] = []
    most_ahead = 0

    def slow(data):
        time.sleep(0.01)
        slow_done.append(len(data))

    async def main():
        nonlocal most_ahead
        pipe = WritePipeline([fast_done.append, slow], depth=depth)
        for i, chunk in enumerate(CHUNKS[:20]):
            await pipe.write(chunk)
            # taken so far (i + 1) minus what the slowest sink finished: chunks held in memory
            most_ahead = max(most_ahead, i + 1 - len(slow_done))
        await pipe.drain()

    asyncio.run(main())
    assert len(slow_done) == 20
    assert most_ahead <= depth


@pytest.mark.parametrize("size", [1 << 20, 3 << 20, 8 << 20])
def test_the_bytes_an_upload_holds_stay_bounded_whatever_its_chunk_size(size):
    """Eight 8 MiB chunks of a client held 64 MiB per upload where 1 MiB chunks held 8: the
    pipeline holds at most max_bytes (a chunk larger than that alone)."""
    bound = 4 << 20
    finished: list[int] = []
    most_held = 0

    def slow(data):
        time.sleep(0.005)
        finished.append(len(data))

    async def main():
        nonlocal most_held
        pipe = WritePipeline([slow], depth=8, max_bytes=bound)
        for i in range(12):
            await pipe.write(bytes(size))
            most_held = max(most_held, (i + 1) * size - sum(finished))
        await pipe.drain()

    asyncio.run(main())
    assert len(finished) == 12
    assert most_held <= max(bound, size)
    if size == 1 << 20:
        assert most_held > 1 << 20  # small chunks still overlap: several in flight


def test_a_failing_sink_stops_the_pipeline_and_its_error_reaches_the_receiver():
    taken: list[bytes] = []

    def broken(data):
        if len(taken) >= 3:
            raise OSError("disk full")
        taken.append(data)

    async def main():
        pipe = WritePipeline([broken, lambda data: None], depth=2)
        with pytest.raises(OSError, match="disk full"):
            for chunk in CHUNKS:
                await pipe.write(chunk)
            await pipe.drain()
        pipe.abandon()

    asyncio.run(main())
    assert len(taken) == 3


def test_abandon_returns_with_every_thread_gone():
    started = threading.Event()
    release = threading.Event()

    def blocking(data):
        started.set()
        release.wait(5)

    async def main():
        pipe = WritePipeline([blocking, lambda data: None], depth=8)
        for chunk in CHUNKS[:5]:
            await pipe.write(chunk)
        await asyncio.to_thread(started.wait, 5)
        threading.Timer(0.05, release.set).start()
        await asyncio.to_thread(pipe.abandon)
        return pipe

    pipe = asyncio.run(main())
    assert not any(t.is_alive() for t in pipe._threads)


def test_the_sdk_fan_out_feeds_each_consumer_and_raises_the_first_error():
    a: list[bytes] = []
    digest = hashlib.sha256()
    with _Behind(a.append, digest.update) as put:
        for chunk in CHUNKS:
            put(chunk)
    assert a == CHUNKS
    assert digest.hexdigest() == hashlib.sha256(b"".join(CHUNKS)).hexdigest()

    def broken(data):
        raise OSError("no space left")

    with pytest.raises(OSError, match="no space left"):
        with _Behind(broken, a.append) as put:
            for chunk in CHUNKS * (PIPELINE + 1):
                put(chunk)


def test_an_upload_left_early_leaves_no_thread_behind(tmp_path):
    from pruning_client.client import CHUNK, _Upload

    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * (CHUNK * (PIPELINE + 4)))
    before = set(threading.enumerate())
    requests = _Upload(path, None).pipelined()
    assert next(requests).WhichOneof("payload") == "header"
    assert pb.UploadRequest.FromString(next(requests)).WhichOneof("payload") == "chunk"
    requests.close()  # what gRPC does when the call fails mid-upload
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(threading.enumerate()) - before


def test_an_upload_hashes_the_whole_file_before_its_last_request_is_taken(tmp_path):
    from pruning_client.client import CHUNK, _Upload

    content = bytes(range(256)) * (CHUNK // 128 + 7)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    upload = _Upload(path, None, verify="sha256")
    requests = upload.pipelined()
    assert next(requests).WhichOneof("payload") == "header"
    sent = b"".join(pb.UploadRequest.FromString(r).chunk for r in requests)
    assert sent == content
    assert upload.digest.hexdigest() == hashlib.sha256(content).hexdigest()


def test_an_upload_checked_by_crc32_counts_every_byte_sent_and_never_hashes(tmp_path):
    from pruning_client.client import CHUNK, _Upload

    content = bytes(range(256)) * (CHUNK // 128 + 7)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    upload = _Upload(path, None)  # the default: verify="crc32"
    requests = upload.pipelined()
    assert next(requests).WhichOneof("payload") == "header"
    sent = b"".join(pb.UploadRequest.FromString(r).chunk for r in requests)
    assert sent == content
    assert upload.crc.value == zlib.crc32(content)
    assert upload.digest.hexdigest() == hashlib.sha256().hexdigest()  # nothing hashed by sha256


def test_the_first_error_is_the_one_raised_and_a_write_after_abandon_is_refused():
    def early(data):
        raise OSError("first")

    def late(data):
        time.sleep(0.1)
        raise ValueError("second")

    async def main():
        pipe = WritePipeline([late, early], depth=4)
        await pipe.write(b"x")
        with pytest.raises(OSError, match="first"):
            await pipe.drain()
        pipe = WritePipeline([lambda data: None], depth=4)
        await asyncio.to_thread(pipe.abandon)
        with pytest.raises(RuntimeError, match="abandoned"):
            await pipe.write(b"x")

    asyncio.run(main())

    with pytest.raises(OSError, match="first"):
        with _Behind(late, early) as put:
            put(b"x")


def test_a_drain_cancelled_midway_leaves_abandon_to_wait_for_the_sink():
    # the client goes away while the server drains: the cleanup after it must not run while a
    # sink is still on its chunk (an S3 part upload, a slow disk)
    events: list[str] = []
    errors: list[str] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(repr(args.exc_value))

    def slow(data):
        events.append("sink starts")
        time.sleep(0.3)
        events.append("sink ends")

    async def main():
        pipe = WritePipeline([slow], depth=4)
        await pipe.write(b"x")
        await asyncio.sleep(0.05)
        draining = asyncio.create_task(pipe.drain())
        await asyncio.sleep(0.05)
        draining.cancel()
        with pytest.raises(asyncio.CancelledError):
            await draining
        await asyncio.to_thread(pipe.abandon)
        events.append("abandoned")
        return pipe

    try:
        pipe = asyncio.run(main())
    finally:
        threading.excepthook = previous_hook
    assert events == ["sink starts", "sink ends", "abandoned"]
    assert not any(t.is_alive() for t in pipe._threads) and errors == []


def test_a_failed_cleanup_is_logged_not_raised_in_place_of_the_refusal(caplog):
    from pruning_server.service import _drop

    class BrokenWriter:
        def discard(self):
            raise ConnectionError("the S3 abort failed")

    async def main():
        pipe = WritePipeline([lambda data: None], depth=2)
        await pipe.write(b"x")
        await asyncio.to_thread(_drop, pipe, BrokenWriter())
        return pipe

    pipe = asyncio.run(main())
    assert not any(t.is_alive() for t in pipe._threads)
    assert "could not remove a dropped upload" in caplog.text and "the S3 abort failed" in caplog.text


def test_the_loop_is_woken_about_once_per_chunk_not_once_per_sink():
    """Only the sink that finishes a chunk last gives its slot back (three sinks woke the loop
    three times a chunk before); the slots still all come back."""
    wakes = 0

    class Counting(WritePipeline):
        def _release(self) -> None:
            nonlocal wakes
            wakes += 1
            super()._release()

    def slow(data):
        time.sleep(0.001)

    async def main():
        pipe = Counting([slow, hashlib.sha256().update, len], depth=2)
        for chunk in CHUNKS:
            await pipe.write(chunk)  # depth 2: waits on the slots coming back
        await pipe.drain()
        await asyncio.sleep(0.05)  # the last wake-ups land
        return pipe

    pipe = asyncio.run(main())
    assert pipe._released == len(CHUNKS)
    assert len(CHUNKS) <= wakes < 2 * len(CHUNKS)


def test_a_cancelled_upload_step_waits_for_its_thread_before_the_cleanup():
    """A client gone while its upload commits (an S3 that stalls): the cleanup that follows the
    cancellation must not run beside the commit's thread (it closed the writer's descriptor
    twice and aborted an upload the thread then completed)."""
    from pruning_server.service import _to_the_end

    async def run(outcome):
        started, release, ended = threading.Event(), threading.Event(), []

        def commit():
            started.set()
            release.wait(10)
            ended.append(True)
            if outcome == "raises":
                raise OSError("the store went away")
            return "sha"

        task = asyncio.create_task(_to_the_end(commit))
        await asyncio.to_thread(started.wait, 10)
        for _ in range(2):  # cancelled, then cancelled again while it waits
            task.cancel()
            await asyncio.sleep(0.05)
            assert not task.done() and not ended
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ended

    asyncio.run(run("returns"))
    asyncio.run(run("raises"))

    async def plain():  # not cancelled: its result, or its error, as to_thread gives them
        assert await _to_the_end(lambda: 5) == 5
        with pytest.raises(ZeroDivisionError):
            await _to_the_end(lambda: 1 / 0)

    asyncio.run(plain())


@pytest.mark.parametrize("which", ["GenericError", "PermissionDeniedError", "UnauthenticatedError", "StoreUnavailable"])
def test_an_artifact_store_that_does_not_answer_is_unavailable_not_internal(which):
    """S3 down, stalled past its timeout, or refusing rotated credentials: clients retry
    UNAVAILABLE; INTERNAL said the service was broken."""
    import grpc
    from obstore import exceptions

    from pruning_server.errors import Cut
    from pruning_server.interceptors import _answer_failure

    class Context:
        async def abort(self, code, details):
            raise _Aborted(code, details)

    class _Aborted(Exception):
        pass

    from pruning_core import objectstore

    kind = getattr(objectstore, which, None) or getattr(exceptions, which)
    error = kind("Generic S3 error: error sending request: Connection refused")
    with pytest.raises(_Aborted) as aborted:
        asyncio.run(_answer_failure(Context(), "/pruning.v1.PruningService/UploadDataset", error, Cut(4096, 10)))
    code, message = aborted.value.args
    assert code == grpc.StatusCode.UNAVAILABLE
    if which in ("GenericError", "StoreUnavailable"):
        assert message == "the artifact store is unavailable; retry shortly"
    else:  # no pause to wait out: the operator must fix the credentials
        assert "refused the server's credentials" in message and "operator" in message


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        (
            "Generic S3 error: The operation lacked the necessary privileges to complete for path p/x: Error "
            "performing PUT http://127.0.0.1:1/b/p/x?partNumber=1 in 3.2ms - Server returned non-2XX status code: "
            "403 Forbidden: <Code>SignatureDoesNotMatch</Code>",
            True,
        ),
        ("Generic S3 error: The operation lacked valid authentication credentials for path p/x", True),
        ("Generic S3 error: Error performing PUT ...: error sending request: Connection refused", False),
    ],
)
def test_a_writer_refused_the_credentials_is_told_apart_from_a_store_down(text, refused):
    """obstore's writer says a 403 only in its bare OSError's text: an upload refused so was
    answered "retry shortly", where every other call said the operator must fix the credentials."""
    from pruning_core import objectstore

    with pytest.raises(objectstore.StoreUnavailable) as raised, objectstore._writer_errors():
        raise OSError(text)
    assert isinstance(raised.value, objectstore.refused_errors()) is refused
    assert isinstance(raised.value, objectstore.unavailable_errors())


def test_a_stall_watch_closed_as_its_timer_fires_ends_nothing_and_leaves_no_timer():
    """A download that ended as the stall timer fired must not be aborted, nor its task
    cancelled, nor a timer re-armed for good after the watch was closed."""
    from pruning_server.service import _StallWatch

    class Context:
        aborted = 0

        async def abort(self, code, details):
            Context.aborted += 1

    async def main() -> tuple[bool, bool]:
        watch = _StallWatch(Context(), 0.05)
        watch.since = time.monotonic() - 1  # stalled: the check would end it
        watch._check()  # the timer fires: its end is scheduled...
        watch.close()  # ...and the download ends before that runs
        await asyncio.sleep(0.3)
        current = asyncio.current_task()
        return watch.fired, current is not None and current.cancelled()

    fired, cancelled = asyncio.run(main())
    assert not fired and not cancelled and Context.aborted == 0
