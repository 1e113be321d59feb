"""Kernel time of writing into new files on this machine: what a transfer pays per byte that
the bare echo of ``bench_transfer.py`` does not (the echo writes no file).

Writes ``--mb`` MiB in 1 MiB writes, from one buffer, into a new file, three times in a row,
each file removed after it is written, and prints the wall and kernel seconds per GiB of each.
On a virtual machine whose host backs guest memory only once it is touched (and takes back
what the guest frees), the first write, into pages never used or long freed, costs several
times what the next ones, into the pages the previous file just freed, cost; on a host that
has been running a while, every write costs what the later ones do.

Usage: python bench/bench_page_cache.py [--mb 1024] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

MiB = 1 << 20


def write_new_file(directory: str, megabytes: int, block: bytes) -> tuple[float, float]:
    """(wall s, kernel s) of writing ``megabytes`` MiB into a new file, without fsync."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    started = time.perf_counter()
    fd, name = tempfile.mkstemp(dir=directory, prefix="page-cache-")
    try:
        for _ in range(megabytes):
            os.write(fd, block)
    finally:
        os.close(fd)
    wall = time.perf_counter() - started
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    os.unlink(name)
    return wall, kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    block = os.urandom(MiB)
    per_gib = 1024 / args.mb
    for i in range(3):
        wall, kernel = write_new_file(args.dir, args.mb, block)
        print(f"new file {i + 1}: {wall * per_gib:.2f} s/GiB wall, {kernel * per_gib:.2f} s/GiB in the kernel")


if __name__ == "__main__":
    main()
