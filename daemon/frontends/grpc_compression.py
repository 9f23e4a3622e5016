"""gRPC message compression (grpc-encoding gzip and deflate, which tritonclient offers), inflated
a slice per loop turn and capped like an uncompressed message.

A request message flagged compressed is inflated RECV_SLICE bytes at a time with the loop let go
between slices, and abandoned as soon as it grows past the call's limit (server.max_request_bytes
for ModelInfer, server.max_structured_bytes for the rest): a zip bomb costs at most one limit's
worth of inflating, in ~1 ms steps. Replies are sent uncompressed, as Triton does by default
(its --grpc-infer-response-compression-level is "none"): grpc-accept-encoding lets a server
compress, it never obliges it. An encoding other than identity, gzip and deflate is answered
UNIMPLEMENTED with the grpc-accept-encoding header that lists these, as the gRPC spec says.
"""

from __future__ import annotations

import asyncio
import zlib

from grpclib.server import Stream

from inferd.common.errors import ErrorCode, InferdError, clip, invalid

INFLATE_SLICE = 1 << 20  # bytes given out per loop turn (~1 ms)
INFLATE_INPUT = 1 << 18  # bytes taken in per loop turn (<= ~8 ms: empty fixed-Huffman blocks, 1.25 bytes each)
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # gRPC's deflate is zlib's format (RFC 1950)
ACCEPTED = "identity,gzip,deflate"


def request_encoding(stream: Stream) -> str | None:
    """The call's grpc-encoding (None for identity or none); UNIMPLEMENTED, with the accepted
    encodings in the answer's headers, for one this server cannot inflate."""
    headers = stream._stream.headers or ()  # (grpclib keeps grpc-* headers out of the metadata)
    encoding = next((value for key, value in headers if key == "grpc-encoding"), "identity")
    if encoding == "identity":
        return None
    if encoding not in WBITS:
        _advertise_accepted(stream)
        raise InferdError(ErrorCode.UNIMPLEMENTED, f"grpc-encoding {clip(encoding)!r} is not supported "
                          f"(supported: {ACCEPTED})")
    return encoding


def _advertise_accepted(stream: Stream) -> None:
    """Add grpc-accept-encoding to the headers this call's status goes out in: grpclib refuses
    grpc-* names in metadata, so the HTTP/2 stream's send_headers is wrapped for this one call."""
    h2_stream = stream._stream
    send_headers = h2_stream.send_headers

    async def with_accepted(headers, end_stream=False):
        await send_headers([*headers, ("grpc-accept-encoding", ACCEPTED)], end_stream=end_stream)

    h2_stream.send_headers = with_accepted


async def inflate(data: bytes | bytearray, encoding: str | None, max_bytes: int, key: str) -> bytearray:
    """`data` inflated, INFLATE_SLICE bytes per loop turn; RESOURCE_EXHAUSTED once it passes
    `max_bytes` (the setting `key`), INVALID_ARGUMENT when it is not whole, valid `encoding` data.
    A message flagged compressed in a call without an encoding is a protocol error: INTERNAL,
    as the spec says."""
    if encoding is None:
        raise InferdError(ErrorCode.INTERNAL, "the message is flagged compressed but the call has no grpc-encoding")
    inflater = zlib.decompressobj(WBITS[encoding])
    out, view, taken = bytearray(), memoryview(data), 0
    try:
        while True:
            # At most a slice in (empty blocks inflate to nothing: 60 MiB of them held the loop
            # 1.7 s in one call) and a slice out (a bomb) per loop turn.
            pending = inflater.unconsumed_tail
            if not pending:
                pending, taken = view[taken : taken + INFLATE_INPUT], min(len(view), taken + INFLATE_INPUT)
            piece = inflater.decompress(pending, INFLATE_SLICE)
            out += piece
            if len(out) > max_bytes:
                raise InferdError(ErrorCode.RESOURCE_EXHAUSTED, f"the message inflates to more than {key} "
                                  f"({max_bytes:,} bytes)")
            if inflater.eof or (taken == len(view) and not inflater.unconsumed_tail and len(piece) < INFLATE_SLICE):
                break  # (a full slice out may leave output inside zlib)
            await asyncio.sleep(0)
    except zlib.error:
        raise invalid(f"the message is not valid {encoding} data") from None
    if not inflater.eof or inflater.unused_data or taken < len(view):
        raise invalid(f"the message is not one whole {encoding} stream")
    return out
