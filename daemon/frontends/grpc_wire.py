"""A gRPC call's request message off the wire, bounded and without the long steps that grpclib
and protobuf make of a big one.

grpclib has no message size limit and reads a message in one step however large (joining every
DATA frame already received); protobuf then copies each `raw_input_contents` entry twice (when it
parses, and again when Python reads the field): a 60 MiB ModelInfer held the loop ~140 ms and
peaked at 3x its size. Here the length prefix is checked first (a message over
server.max_request_bytes is refused before it is buffered; HTTP/2 flow control holds the client
at the stream's window meanwhile), a big message is read RECV_SLICE bytes per loop turn, and
ModelInfer's raw contents stay views of the received bytes; protobuf parses only the rest.
A reply is written the same way round: protobuf serializes all but its raw_output_contents, which
are appended from the output arrays' own memory, RECV_SLICE bytes per loop turn (protobuf and
grpclib made four copies of a 48 MiB answer in one step: ~210 ms, 7x its size).

grpclib's `Stream` has no public way in ahead of the message body, so `receive` reads its
private `_stream` (the HTTP/2 stream) directly.
"""

from __future__ import annotations

import asyncio

import numpy as np
from grpclib.server import Stream

from inferd.common.codec import raw_view
from inferd.common.errors import ErrorCode, InferdError, invalid
from inferd.daemon.frontends.grpc_compression import inflate, request_encoding

RECV_SLICE = 1 << 20  # bytes of a message read per loop turn (~5 ms)
RAW_INPUT_CONTENTS = 7  # ModelInferRequest's field number (inference.proto)
RAW_OUTPUT_CONTENTS_TAG = b"\x32"  # ModelInferResponse's field 6, length-delimited
MAX_TOP_FIELDS = 65536  # top-level fields of a ModelInferRequest (it needs a few dozen)


async def receive(stream: Stream, max_bytes: int, key: str, may_end: bool = False) -> bytes | bytearray | None:
    """The call's (next) request message, unparsed; RESOURCE_EXHAUSTED past `max_bytes` (the
    setting `key`), compressed or not (grpc_compression). None where the client's stream ended
    between messages, if it `may_end` (a streaming call)."""
    encoding = request_encoding(stream)
    prefix = await _read(stream, 5)
    if not prefix and may_end:
        return None
    if len(prefix) != 5:
        raise invalid("the request carries no message")
    body = await _message(stream, int.from_bytes(prefix[1:], "big"), max_bytes, key)
    return await inflate(body, encoding, max_bytes, key) if prefix[0] else body


async def _message(stream: Stream, size: int, max_bytes: int, key: str) -> bytes | bytearray:
    if size > max_bytes:
        raise InferdError(ErrorCode.RESOURCE_EXHAUSTED,
                          f"a message of {size:,} bytes is larger than {key} ({max_bytes:,} bytes)")
    if size <= RECV_SLICE:
        return await _read(stream, size)
    body = bytearray()  # grown piece by piece: zero-filling 60 MiB up front took ~50 ms
    while len(body) < size:
        body += await _read(stream, min(RECV_SLICE, size - len(body)))
        await asyncio.sleep(0)
    return body


async def _read(stream: Stream, size: int) -> bytes:
    try:
        return await stream._stream.recv_data(size)
    except AssertionError:  # grpclib's way of saying that the stream ended inside a message
        raise invalid("the request ends inside its message") from None


def split_raw_contents(body: bytes | bytearray, max_rest: int) -> tuple[bytes | memoryview, list[memoryview]]:
    """A ModelInferRequest as (the message without its raw_input_contents, those contents as
    views of `body`). Only the top level is walked: the rest is protobuf's to parse in one step,
    so it may be `max_rest` bytes (server.max_structured_bytes): 64 MiB of typed contents would be
    64 M varints, ~150 ms of parsing and 4 bytes each."""
    view = memoryview(body)
    raw, kept = [], []
    pos, end, fields = 0, len(view), 0
    while pos < end:
        fields += 1
        if fields > MAX_TOP_FIELDS:
            raise invalid(f"the request has more than {MAX_TOP_FIELDS:,} fields")
        start = pos
        tag, pos = _varint(view, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 2:
            length, pos = _varint(view, pos)
            if number == RAW_INPUT_CONTENTS and pos + length <= end:
                raw.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        elif wire_type == 0:
            pos = _varint(view, pos)[1]
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise invalid("the request is not a valid protobuf message")
        kept.append(view[start:pos])
    if pos != end:
        raise invalid("the request is not a valid protobuf message")
    rest = sum(map(len, kept))
    if rest > max_rest:
        raise InferdError(ErrorCode.RESOURCE_EXHAUSTED, f"the message apart from its raw_input_contents has {rest:,} bytes, more "
                          f"than server.max_structured_bytes ({max_rest:,} bytes): send big tensors in raw_input_contents")
    return (b"".join(kept) if raw else view), raw


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise invalid("the request is not a valid protobuf message")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


class EncodedReply:
    """A reply already serialized: grpclib's codec checks the reply's type (the servicer maps
    ModelInfer to this class) and calls SerializeToString."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray):
        self.data = data

    def SerializeToString(self) -> bytes | bytearray:  # noqa: N802 (protobuf's name)
        return self.data


async def with_raw_contents(head: bytes, arrays: list[np.ndarray], wrap: bytes = b"") -> EncodedReply:
    """`head` (the reply serialized without raw_output_contents) and one raw_output_contents
    entry per array, copied once, RECV_SLICE bytes per loop turn. `wrap`: the tag of an outer
    message's field that holds the reply (ModelStreamInferResponse's), written first."""
    views = [raw_view(array) for array in arrays]
    body = bytearray()
    if wrap:  # the reply's length is known before it is written: no second copy to wrap it
        length = len(head) + sum(len(RAW_OUTPUT_CONTENTS_TAG) + len(_encode_varint(len(v))) + len(v) for v in views)
        body += wrap + _encode_varint(length)
    body += head
    for raw in views:
        body += RAW_OUTPUT_CONTENTS_TAG + _encode_varint(len(raw))
        if len(raw) <= RECV_SLICE:
            body += raw
            continue
        for start in range(0, len(raw), RECV_SLICE):
            body += raw[start : start + RECV_SLICE]
            await asyncio.sleep(0)
    return EncodedReply(body)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
