"""An upload takes a regular file only: a pipe (`<(...)`, /dev/stdin fed by a pipe), a FIFO or
a device is refused at once with an OSError (the CLI's exit 2), before any call, rather than
hashed out of its bytes ("empty upload"), waited on at the open, or read for ever (/dev/zero)."""

import asyncio
import os
import threading

import pytest

from pruning_client import Client
from pruning_client.aio import AsyncClient
from pruning_client.cli import run


def _fifo(tmp_path):
    path = tmp_path / "data.npz"
    os.mkfifo(path)
    return path


def _pipe():
    read, write = os.pipe()
    threading.Thread(target=lambda: (os.write(write, b"PK\x03\x04" + b"x" * 100), os.close(write)), daemon=True).start()
    return read, f"/dev/fd/{read}"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "pipe", "device"])
def test_an_upload_of_something_other_than_a_regular_file_is_refused_before_any_call(tmp_path, kind):
    fd = None
    if kind == "fifo":
        path = _fifo(tmp_path)  # nobody writes it: an open would block
    elif kind == "pipe":
        fd, path = _pipe()
    else:
        path = "/dev/zero"  # a hash of it would never end
    try:
        with Client("127.0.0.1:1") as client:  # nothing listens: a call would be UNAVAILABLE
            with pytest.raises(OSError, match="not a regular file"):
                client.upload_dataset(path)
    finally:
        if fd is not None:
            os.close(fd)


@pytest.mark.timeout(20)
def test_the_async_client_refuses_it_the_same(tmp_path):
    async def upload():
        async with AsyncClient("127.0.0.1:1") as client:
            await client.upload_model(_fifo(tmp_path))

    with pytest.raises(OSError, match="not a regular file"):
        asyncio.run(upload())


@pytest.mark.timeout(20)
def test_the_cli_says_so_with_exit_2(tmp_path, capsys):
    assert run(["--target", "127.0.0.1:1", "upload", "dataset", str(_fifo(tmp_path))]) == 2
    assert "not a regular file" in capsys.readouterr().err
