"""CRC-32 of a zip archive's stored members, computed while its bytes stream past.

An upload is checked after receipt: every archive member is read back and its CRC compared
(:func:`pruning_core.modelcheck.inspect_dataset`). For an ``.npz`` of 1 GiB that pass re-reads
the whole file once the last byte is in. :class:`StoredMembers` is a sink of the upload
pipeline (:class:`~pruning_core.transfer.WritePipeline`) that follows the archive's local file
headers as the bytes arrive and computes the CRC of each stored (uncompressed) member on the
way, so the pass after receipt only re-reads what it could not follow.

It is only a shortcut, never the judge: zipfile still opens every member after receipt (its
header, flags and name checks, and its overlapped-entries check on the Python versions that
have it), and a member's data is spared the read only where
the central directory agrees with what was followed here (same header offset and name, stored,
not encrypted, same size, and the CRC computed here equal to the directory's). Anything else (compressed members,
data descriptors, encryption, a prefix before the archive, headers that disagree with the
directory) stops the scan or is simply read back in full as before.
"""

from __future__ import annotations

import struct

from pruning.checksum import crc32  # zlib-ng's SIMD CRC-32 where its wheels exist

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # a local file header's fixed part (30 bytes)
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ZIP64_EXTRA = 0x0001
_FLAG_ENCRYPTED, _FLAG_DATA_DESCRIPTOR, _FLAG_UTF8 = 0x01, 0x08, 0x800
_STORED = 0
_MAX32 = 0xFFFFFFFF
MAX_MEMBERS = 1024  # an .npz has one member per array; past this the scan stops (bounded memory and CPU)


class StoredMembers:
    """Feed it the archive's bytes in order (any chunking). ``checked`` maps a member's local
    header offset to (CRC-32 of its data, its size, its name in the local header) for each
    stored member seen whole."""

    def __init__(self) -> None:
        self.checked: dict[int, tuple[int, int, str]] = {}
        self._header = bytearray()
        self._header_at = 0  # stream offset where the header being read starts
        self._wanted = _LOCAL.size  # bytes of header needed before it can be parsed
        self._remaining = 0  # data bytes of the current member still to come
        self._size = 0
        self._crc = 0
        self._name = ""
        self._in_member = False
        self.stopped = False

    def __call__(self, data: bytes | memoryview) -> None:
        view, i = memoryview(data), 0
        while i < len(view) and not self.stopped:
            if self._in_member:
                take = min(self._remaining, len(view) - i)
                self._crc = crc32(view[i : i + take], self._crc)
                i += take
                self._remaining -= take
                if not self._remaining:
                    self._member_done()
            else:
                take = min(self._wanted - len(self._header), len(view) - i)
                self._header += view[i : i + take]
                i += take
                if len(self._header) == self._wanted:
                    self._parse_header()

    def _next_header(self, at: int) -> None:
        self._header.clear()
        self._header_at = at
        self._wanted = _LOCAL.size

    def _member_done(self) -> None:
        self.checked[self._header_at] = (self._crc, self._size, self._name)
        self._in_member = False
        if len(self.checked) >= MAX_MEMBERS:
            self.stopped = True  # the rest is left to the check after receipt
        self._next_header(self._header_at + len(self._header) + self._size)

    def _parse_header(self) -> None:
        sig, _, flags, method, _, _, _, csize, usize, name_len, extra_len = _LOCAL.unpack_from(self._header)
        if sig != _LOCAL_SIGNATURE or flags & (_FLAG_ENCRYPTED | _FLAG_DATA_DESCRIPTOR) or method != _STORED:
            self.stopped = True  # the central directory, or a member left to the pass after receipt
            return
        whole = _LOCAL.size + name_len + extra_len
        if len(self._header) < whole:
            self._wanted = whole  # the name and the extra field come next
            return
        if _MAX32 in (csize, usize):
            sizes = _zip64_sizes(bytes(self._header[_LOCAL.size + name_len : whole]), usize, csize)
            if sizes is None:
                self.stopped = True
                return
            usize, csize = sizes
        if csize != usize:
            self.stopped = True  # a stored member's sizes must agree
            return
        raw_name = bytes(self._header[_LOCAL.size : _LOCAL.size + name_len])
        self._name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace")
        self._size = self._remaining = csize
        self._crc = 0
        self._in_member = True
        if not csize:
            self._member_done()


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int] | None:
    """The sizes a zip64 extra field holds in place of those set to 0xFFFFFFFF, or None."""
    i = 0
    while i + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4 : i + 4 + length]
        if kind == _ZIP64_EXTRA:
            values, j = [], 0
            for wanted in (usize == _MAX32, csize == _MAX32):
                if wanted:
                    if j + 8 > len(body):
                        return None
                    values.append(struct.unpack_from("<Q", body, j)[0])
                    j += 8
                else:
                    values.append(None)
            return (values[0] if values[0] is not None else usize, values[1] if values[1] is not None else csize)
        i += 4 + length
    return None
