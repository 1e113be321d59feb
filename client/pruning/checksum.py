"""The CRC-32 that checks a transfer, at the speed of memory.

An artifact's id is the sha256 of its bytes, which the server computes as it receives them.
Checking a download (or an upload hashed on the way) by the sha256 again costs the receiving
end about 0.6 s of CPU per GiB; the CRC-32 (IEEE, as zlib computes it) the server records
beside the sha256 costs 0.02 s with zlib-ng's SIMD code, and catches every burst error of up
to 32 bits and all but one in 2^32 of the rest: what S3 and GCS check transfers with.
"""

from __future__ import annotations

import functools
import os

try:  # zlib-ng's SIMD CRC-32: 0.02 s per GiB here, against zlib's 0.17 s
    from zlib_ng.zlib_ng import crc32, crc32_combine
except ImportError:  # a platform without its wheels: the same CRC, slower
    from zlib import crc32

    crc32_combine = None  # type: ignore[assignment]

__all__ = ["Crc32", "combine", "crc32", "file_crc32"]


def _times(matrix: list[int], vector: int) -> int:
    """A 32 x 32 matrix over GF(2) (its columns as ints) times a vector."""
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


@functools.lru_cache(maxsize=16)
def _zeros(length: int) -> tuple[int, ...]:
    """The operator that runs a CRC-32 on over ``length`` zero bytes (zlib's crc32_combine)."""
    step = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    for _ in range(3):  # a zero byte
        step = [_times(step, column) for column in step]
    operator = [1 << n for n in range(32)]
    while length:
        if length & 1:
            operator = [_times(step, column) for column in operator]
        length >>= 1
        if length:
            step = [_times(step, column) for column in step]
    return tuple(operator)


def combine(first: int, second: int, second_length: int) -> int:
    """The CRC-32 of two byte strings one after the other, from each one's CRC-32 and the
    second's length (chunks checked apart, in threads, then as the whole they make)."""
    if crc32_combine is not None:
        return crc32_combine(first, second, second_length)
    return _times(list(_zeros(second_length)), first) ^ second


_READ = 4 << 20


class Crc32:
    """A running CRC-32, updated as ``hashlib`` objects are."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = crc32(data, self.value)


def file_crc32(path: os.PathLike[str] | str) -> int:
    """The CRC-32 of a file's bytes, read in chunks into one buffer."""
    value = 0
    buffer = bytearray(_READ)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            value = crc32(view[:n], value)
    return value
