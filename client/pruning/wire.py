"""The transfer messages framed by hand, so that a chunk's bytes are copied once, not three times.

protobuf's Python runtime copies a ``bytes`` field into the message when it is built or
parsed, and again when it is serialized or read back out as a Python object. For the 1 MiB
payloads of uploads and downloads those copies cost more CPU than gRPC itself. The helpers
here write and read the same wire format as protobuf (fields may come in any order, the
payload goes last) and hand the payload on as a view of the received bytes.

Only the plain form is read by hand: an ``UploadRequest`` holding just its chunk, or a
``DownloadChunk`` of known fields with the wire types they have in the contract. Anything
else (a header, unknown fields, repeated payloads) goes to protobuf's own parser, so any
conforming peer interoperates and a malformed message fails there as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pruning.v1 import pruning_pb2 as pb

_LEN = 2  # wire type of a length-delimited field
_VARINT = 0
_UPLOAD_CHUNK_TAG = 2 << 3 | _LEN  # UploadRequest.chunk
_DOWNLOAD_DATA_TAG = bytes((2 << 3 | _LEN,))  # DownloadChunk.data
_MAX_VARINT = 10  # an int64 value
_MAX_SHORT_VARINT = 5  # a tag or a length: protobuf refuses longer ones


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, i: int, most: int = _MAX_SHORT_VARINT) -> tuple[int, int]:
    """The varint at ``buf[i]`` (at most ``most`` bytes) and the index after it; ValueError when
    it is cut short or too long."""
    value = shift = 0
    for n in range(most):
        if i + n >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i + n]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + n + 1
        shift += 7
    raise ValueError(f"varint longer than {most} bytes")


# -- uploads ---------------------------------------------------------------------------------


def upload_chunk(data: bytes) -> bytes:
    """A serialized ``UploadRequest(chunk=data)``, with one copy of ``data``."""
    return b"".join((bytes((_UPLOAD_CHUNK_TAG,)), varint(len(data)), data))


def serialize_upload_request(message: pb.UploadRequest | bytes) -> bytes:
    """The request serializer of an upload call: a message, or one already framed by
    :func:`upload_chunk`."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def parse_upload_request(raw: bytes) -> pb.UploadRequest | memoryview:
    """The request deserializer of an upload call: a message holding only its chunk comes back
    as a view of ``raw`` (the chunk's bytes, not copied); anything else as an ``UploadRequest``."""
    if raw[:1] == bytes((_UPLOAD_CHUNK_TAG,)):
        try:
            length, start = _read_varint(raw, 1)
        except ValueError:
            pass
        else:
            if start + length == len(raw):
                return memoryview(raw)[start:]
    return pb.UploadRequest.FromString(raw)


# -- downloads -------------------------------------------------------------------------------


def download_chunk(
    offset: int, data: bytes | memoryview, total_size: int, sha256: str, crc32: int | None = None
) -> bytes:
    """A serialized ``DownloadChunk`` with one copy of ``data``: the small fields serialized by
    protobuf, then ``data``."""
    head = pb.DownloadChunk(offset=offset, total_size=total_size, sha256=sha256, crc32=crc32).SerializeToString()
    return b"".join((head, _DOWNLOAD_DATA_TAG, varint(len(data)), data))


@dataclass(slots=True)
class Chunk:
    """A received ``DownloadChunk``; ``data`` may be a view of the received bytes."""

    offset: int
    data: bytes | memoryview
    total_size: int
    sha256: str
    crc32: int | None = None  # the whole artifact's, where the server recorded one


def _int64(value: int) -> int:
    value &= (1 << 64) - 1  # as protobuf reads an over-long varint
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_download_chunk(raw: bytes) -> Chunk:
    """The response deserializer of a download call."""
    varints = {1: 0, 3: 0, 5: 0}  # offset, total_size, crc32 (present only when seen)
    spans: dict[int, memoryview] = {}  # data, sha256
    seen: set[int] = set()
    i = 0
    try:
        while i < len(raw):
            tag, i = _read_varint(raw, i)
            number, kind = tag >> 3, tag & 7
            if number in seen:
                raise ValueError("a repeated field")  # protobuf judges every copy
            seen.add(number)
            if number in varints and kind == _VARINT:
                varints[number], i = _read_varint(raw, i, _MAX_VARINT)
            elif number in (2, 4) and kind == _LEN:
                length, i = _read_varint(raw, i)
                if i + length > len(raw):
                    raise ValueError("truncated field")
                spans[number] = memoryview(raw)[i : i + length]
                i += length
            else:
                raise ValueError("not the plain form")
        sha256 = bytes(spans.get(4, b"")).decode()
    except ValueError:  # UnicodeDecodeError included: protobuf judges it
        message = pb.DownloadChunk.FromString(raw)
        crc = message.crc32 if message.HasField("crc32") else None
        return Chunk(message.offset, message.data, message.total_size, message.sha256, crc)
    crc = varints[5] & 0xFFFFFFFF if 5 in seen else None  # a uint32, as protobuf reads a longer varint
    return Chunk(_int64(varints[1]), spans.get(2, b""), _int64(varints[3]), sha256, crc)


# -- calls -----------------------------------------------------------------------------------

_SERVICE = f"/{pb.DESCRIPTOR.services_by_name['PruningService'].full_name}/"
UPLOAD_MODEL, UPLOAD_DATASET = _SERVICE + "UploadModel", _SERVICE + "UploadDataset"
UPLOAD_METHODS = (UPLOAD_MODEL, UPLOAD_DATASET)  # their requests: serialize_/parse_upload_request


class FramedCalls:
    """The upload and download calls of a channel (``grpc`` or ``grpc.aio``), with the
    serializers above in place of protobuf's: uploads take :func:`upload_chunk`'s frames
    (and messages), downloads yield :class:`Chunk`."""

    def __init__(self, channel: Any) -> None:
        def upload(method: str) -> Any:
            return channel.stream_unary(
                method, request_serializer=serialize_upload_request, response_deserializer=pb.Artifact.FromString
            )

        self.upload_model = upload(UPLOAD_MODEL)
        self.upload_dataset = upload(UPLOAD_DATASET)
        self.download = channel.unary_stream(
            _SERVICE + "DownloadArtifact",
            request_serializer=pb.DownloadArtifactRequest.SerializeToString,
            response_deserializer=parse_download_chunk,
        )
