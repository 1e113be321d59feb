"""The transfer messages framed by hand (pruning.wire) against protobuf's own codec."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from pruning import wire
from pruning.v1 import pruning_pb2 as pb

SIZES = [0, 1, 127, 128, 300, 16383, 16384, 1 << 20, (1 << 20) + 3]


def _data(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


@pytest.mark.parametrize("size", SIZES)
def test_a_framed_upload_chunk_is_the_message_and_reads_back_as_a_view(size):
    data = _data(size)
    framed = wire.upload_chunk(data)
    assert framed == pb.UploadRequest(chunk=data).SerializeToString()
    parsed = wire.parse_upload_request(framed)
    assert isinstance(parsed, memoryview) and parsed.obj is framed  # no copy
    assert bytes(parsed) == data


def test_an_upload_header_and_odd_chunk_messages_go_to_protobuf():
    header = pb.UploadRequest(header=pb.UploadHeader(filename="m.keras", size=3))
    assert wire.parse_upload_request(header.SerializeToString()) == header
    assert wire.serialize_upload_request(header) == header.SerializeToString()
    assert wire.parse_upload_request(b"") == pb.UploadRequest()
    # two chunk fields: protobuf keeps the last; a view of the first would be wrong
    twice = wire.upload_chunk(b"first") + wire.upload_chunk(b"second")
    assert wire.parse_upload_request(twice) == pb.UploadRequest(chunk=b"second")
    # a chunk followed by a header: the oneof's last member wins
    mixed = wire.upload_chunk(b"abc") + header.SerializeToString()
    assert wire.parse_upload_request(mixed) == pb.UploadRequest.FromString(mixed)


@pytest.mark.parametrize("raw", [b"\x12", b"\x12\x05abc", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01x"])
def test_a_cut_upload_chunk_fails_as_protobuf_fails(raw):
    with pytest.raises(DecodeError):
        pb.UploadRequest.FromString(raw)
    with pytest.raises(DecodeError):
        wire.parse_upload_request(raw)


@pytest.mark.parametrize("size", SIZES)
def test_a_framed_download_chunk_parses_as_the_message_and_back(size):
    data = _data(size)
    framed = wire.download_chunk(12345678901, data, 98765432109, "ab" * 32, 0xFFFFFFFF)
    message = pb.DownloadChunk.FromString(framed)
    assert message == pb.DownloadChunk(
        offset=12345678901, data=data, total_size=98765432109, sha256="ab" * 32, crc32=0xFFFFFFFF
    )
    chunk = wire.parse_download_chunk(framed)
    assert isinstance(chunk.data, memoryview) and chunk.data.obj is framed  # no copy
    assert (chunk.offset, bytes(chunk.data), chunk.total_size, chunk.sha256, chunk.crc32) == (
        12345678901,
        data,
        98765432109,
        "ab" * 32,
        0xFFFFFFFF,
    )


@pytest.mark.parametrize("crc", [None, 0, 1, 0xFFFFFFFF])
def test_a_download_chunk_s_crc32_is_read_as_present_or_absent_as_protobuf_reads_it(crc):
    """A CRC-32 of 0 is a CRC like any other: it is sent, and read as present."""
    framed = wire.download_chunk(0, b"xyz", 3, "s", crc)
    assert pb.DownloadChunk.FromString(framed).HasField("crc32") is (crc is not None)
    assert wire.parse_download_chunk(framed).crc32 == crc


@given(
    offset=st.integers(-(1 << 63), (1 << 63) - 1),
    data=st.binary(max_size=300),
    total=st.integers(-(1 << 63), (1 << 63) - 1),
    sha=st.text(max_size=70),
    crc=st.none() | st.integers(0, 0xFFFFFFFF),
)
def test_any_download_chunk_protobuf_writes_reads_the_same(offset, data, total, sha, crc):
    message = pb.DownloadChunk(offset=offset, data=data, total_size=total, sha256=sha, crc32=crc)
    chunk = wire.parse_download_chunk(message.SerializeToString())
    assert (chunk.offset, bytes(chunk.data), chunk.total_size, chunk.sha256, chunk.crc32) == (
        offset,
        data,
        total,
        sha,
        crc,
    )


@given(raw=st.binary(max_size=64))
def test_any_bytes_read_as_protobuf_reads_them(raw):
    """Garbage decodes to what protobuf decodes, or fails where protobuf fails."""
    try:
        expected = pb.DownloadChunk.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            wire.parse_download_chunk(raw)
    else:
        chunk = wire.parse_download_chunk(raw)
        assert (chunk.offset, bytes(chunk.data), chunk.total_size, chunk.sha256, chunk.crc32) == (
            expected.offset,
            expected.data,
            expected.total_size,
            expected.sha256,
            expected.crc32 if expected.HasField("crc32") else None,
        )
    try:
        expected_up = pb.UploadRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            wire.parse_upload_request(raw)
    else:
        parsed = wire.parse_upload_request(raw)
        if isinstance(parsed, memoryview):
            assert expected_up.WhichOneof("payload") == "chunk" and expected_up.chunk == bytes(parsed)
        else:
            assert parsed == expected_up


def test_a_download_chunk_with_unknown_fields_or_repeats_reads_as_protobuf_does():
    base = pb.DownloadChunk(offset=5, data=b"xyz", total_size=9, sha256="s").SerializeToString()
    unknown = base + bytes([9 << 3 | 0, 1])  # field 9, a varint
    repeated = base + wire.download_chunk(7, b"later", 9, "t")
    for raw in (unknown, repeated):
        expected = pb.DownloadChunk.FromString(raw)
        chunk = wire.parse_download_chunk(raw)
        assert (chunk.offset, bytes(chunk.data), chunk.total_size, chunk.sha256, chunk.crc32) == (
            expected.offset,
            expected.data,
            expected.total_size,
            expected.sha256,
            expected.crc32 if expected.HasField("crc32") else None,
        )


@pytest.mark.parametrize(
    "raw",
    [
        b"\x12\x83\x80\x80\x80\x80\x80\x80\x80\x80\x00abc",  # a length in 10 bytes
        b"\x12\x83\x80\x80\x80\x80\x00abc",  # in 6 bytes
        b"\x92\x80\x80\x80\x80\x00\x03abc",  # a tag in 6 bytes
        b"\x22\x01\xff\x22\x01a",  # sha256 twice, the first not UTF-8
    ],
)
def test_crafted_messages_protobuf_refuses_are_refused(raw):
    """Over-long tags and lengths, and repeated fields, which random bytes seldom produce."""
    with pytest.raises(DecodeError):
        pb.DownloadChunk.FromString(raw)
    with pytest.raises(DecodeError):
        wire.parse_download_chunk(raw)
    if raw.startswith(b"\x12"):
        with pytest.raises(DecodeError):
            pb.UploadRequest.FromString(raw)
        with pytest.raises(DecodeError):
            wire.parse_upload_request(raw)


def test_lengths_in_up_to_five_bytes_read_as_protobuf_reads_them():
    raw = b"\x12\x83\x80\x80\x80\x00abc"  # a length of 3 in 5 bytes
    assert bytes(wire.parse_upload_request(raw)) == pb.UploadRequest.FromString(raw).chunk == b"abc"  # type: ignore[arg-type]
    assert bytes(wire.parse_download_chunk(raw).data) == b"abc"
