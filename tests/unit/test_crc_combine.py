"""checksum.combine: the CRC-32 of chunks checked apart (the server's reading threads), as the
whole they make, with zlib-ng's crc32_combine and with the plain-Python one used without it."""

from __future__ import annotations

import os
import zlib

import pytest

from pruning import checksum


@pytest.mark.parametrize("native", [True, False])
def test_chunks_combine_into_the_whole_file_s_crc(monkeypatch, native):
    if not native:
        monkeypatch.setattr(checksum, "crc32_combine", None)
    elif checksum.crc32_combine is None:
        pytest.skip("zlib-ng is not installed")
    data = os.urandom(3 * (1 << 16) + 123)
    for size in (1, 1000, 1 << 16):
        value = 0
        for start in range(0, len(data), size):
            part = data[start : start + size]
            value = checksum.combine(value, zlib.crc32(part), len(part))
        assert value == zlib.crc32(data), size
    assert checksum.combine(zlib.crc32(data), 0, 0) == zlib.crc32(data)
    assert checksum.combine(0, zlib.crc32(data), len(data)) == zlib.crc32(data)
