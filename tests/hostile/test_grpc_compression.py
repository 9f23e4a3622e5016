"""Hostile compressed gRPC messages, frame by frame (tests/grpc_raw.py): a zip bomb, an
encoding the server does not know, corrupt and truncated data, a compressed flag without an
encoding. Each gets a clear status, promptly, while the loop keeps answering health checks, and
nothing reaches the log as a traceback."""

from __future__ import annotations

import gzip
import http.client
import threading
import time
import zlib

import pytest
from grpc_raw import framed, grpc_call, infer_message
from tritonclient.grpc import service_pb2 as pb


def _port(daemon) -> int:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return int(event["address"].rsplit(":", 1)[1])


def _zeros_deflated(size: int, wbits: int) -> bytes:
    """`size` zero bytes compressed (~1000:1), made a slice at a time."""
    compressor, out, chunk = zlib.compressobj(9, zlib.DEFLATED, wbits), [], bytes(1 << 20)
    for _ in range(size >> 20):
        out.append(compressor.compress(chunk))
    return b"".join(out) + compressor.flush()


class _Probe:
    """/v2/health/live asked in a loop on its own thread: the slowest answer says how long the
    event loop was held."""

    def __init__(self, daemon):
        self.address, self.slowest, self.answered = daemon.address, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection(*self.address, timeout=60)
            connection.request("GET", "/v2/health/live")
            assert connection.getresponse().status == 200
            connection.close()
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.answered += 1
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)


def _no_traceback(daemon, since: int) -> None:
    assert not [line for line in daemon.lines[since:] if "Traceback" in line or '"exception"' in line]


@pytest.mark.parametrize("encoding, wbits", [("gzip", 31), ("deflate", 15)])
def test_a_zip_bomb_is_refused_at_max_request_bytes_without_holding_the_loop(daemon, encoding, wbits):
    """256 MiB of zeros in ~250 KiB: inflating stops past server.max_request_bytes (64 MiB)."""
    since = len(daemon.lines)
    bomb = _zeros_deflated(256 << 20, wbits)
    body = b"\1" + len(bomb).to_bytes(4, "big") + bomb
    with _Probe(daemon) as probe:
        started = time.monotonic()
        answer = grpc_call(_port(daemon), body, extra=[("grpc-encoding", encoding)])
        took = time.monotonic() - started
    assert answer.status == "8" and "inflates to more than server.max_request_bytes" in answer.message
    print(f"bomb answered in {took:.3f} s, slowest health answer {probe.slowest:.3f} s ({probe.answered} answers)")
    assert took < 10 and probe.answered > 0 and probe.slowest < 1.0, (took, probe.slowest)
    _no_traceback(daemon, since)


def test_empty_deflate_blocks_are_taken_a_slice_at_a_time(daemon):
    """60 MiB of empty fixed-Huffman blocks (10 bits each) inflate to nothing: zlib took them in
    one 1.7 s call before the input was sliced too."""
    since = len(daemon.lines)
    data = b"\x78\x9c" + bytes.fromhex("0208208000") * (12 << 20)  # four empty blocks per 5 bytes
    body = b"\1" + len(data).to_bytes(4, "big") + data
    with _Probe(daemon) as probe:
        answer = grpc_call(_port(daemon), body, extra=[("grpc-encoding", "deflate")])
    print(f"slowest health answer {probe.slowest:.3f} s ({probe.answered} answers)")
    assert answer.status == "3" and "not one whole deflate stream" in answer.message
    assert probe.answered > 0 and probe.slowest < 0.5
    _no_traceback(daemon, since)


def test_a_bomb_to_a_small_method_is_capped_at_max_structured_bytes(daemon):
    answer = grpc_call(_port(daemon), framed(b"", compress=lambda _: gzip.compress(bytes(8 << 20))),
                       method="ModelMetadata", extra=[("grpc-encoding", "gzip")])
    assert answer.status == "8" and "server.max_structured_bytes" in answer.message


def test_an_unknown_encoding_is_unimplemented_and_lists_the_supported_ones(daemon):
    since = len(daemon.lines)
    answer = grpc_call(_port(daemon), framed(pb.ServerLiveRequest(), compress=lambda d: d), method="ServerLive",
                       extra=[("grpc-encoding", "snappy")])
    assert answer.status == "12" and "snappy" in answer.message  # UNIMPLEMENTED
    assert set(answer.headers["grpc-accept-encoding"].split(",")) == {"identity", "gzip", "deflate"}
    assert answer.content_type.startswith("application/grpc")
    _no_traceback(daemon, since)


@pytest.mark.parametrize("data, encoding, words", [
    (b"\x1f\x8b\x08\x00garbage-not-deflate-data", "gzip", "not valid gzip"),
    (gzip.compress(pb.ServerLiveRequest().SerializeToString() + bytes(4096))[:-12], "gzip", "not one whole gzip"),
    (gzip.compress(b"") + b"trailing", "gzip", "not one whole gzip"),
    (gzip.compress(b"") + bytes(3 << 20), "gzip", "not one whole gzip"),  # trailing past the first slice
    (b"\x78\x9c\xff\xff\xff", "deflate", "not valid deflate"),
    (zlib.compress(bytes(10)), "gzip", "not valid gzip"),  # deflate data under gzip's name
], ids=["corrupt", "truncated", "trailing", "trailing-slices", "corrupt-deflate", "wrong-format"])
def test_corrupt_compressed_messages_are_invalid_argument(daemon, data, encoding, words):
    since = len(daemon.lines)
    body = b"\1" + len(data).to_bytes(4, "big") + data
    answer = grpc_call(_port(daemon), body, extra=[("grpc-encoding", encoding)])  # (ModelInfer: up to 64 MiB)
    assert answer.status == "3" and words in answer.message, answer  # INVALID_ARGUMENT
    _no_traceback(daemon, since)


@pytest.mark.parametrize("extra", [[], [("grpc-encoding", "identity")]], ids=["none", "identity"])
def test_a_compressed_flag_without_an_encoding_is_a_protocol_error(daemon, extra):
    """The gRPC spec: INTERNAL (not a guess at the format)."""
    answer = grpc_call(_port(daemon), framed(pb.ServerLiveRequest(), compress=gzip.compress), method="ServerLive",
                       extra=extra)
    assert answer.status == "13" and "no grpc-encoding" in answer.message


def test_a_compressed_raw_infer_is_served(daemon):
    """The same call uncompressed and gzipped gets the same answer (a missing input here)."""
    message = infer_message("add_sub", [("INPUT0", "INT32", [1, 16], bytes(64))])
    plain = grpc_call(_port(daemon), message)
    zipped = grpc_call(_port(daemon), framed(message[5:], compress=gzip.compress), extra=[("grpc-encoding", "gzip")])
    assert plain.status == zipped.status == "3" and plain.message == zipped.message and "INPUT1" in plain.message
