"""The JSON decoder process that json_offload.py starts (`python -m` this module): it parses the
big V2 JSON request bodies the event loop must not, one at a time, and hands back the decoded
request. It imports only the HTTP codec (numpy, orjson), never a runtime.

Protocol on its stdin / stdout pipes: a body is an 8-byte little-endian length and the bytes;
each answer is an 8-byte length, a 1-byte kind (OK / ERROR / MEMORY) and, for OK, a pickle
(protocol 5) of (InferRequest, OutputFormat), for ERROR the UTF-8 message of a 400.
Numeric values cost the daemon nothing per value (an array's bytes); BYTES elements become
Python objects again in the daemon (unpickled, then handed to the worker element by element),
so they stay bounded by server.max_value_elements as on the event loop.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import resource
import signal
import struct
import sys

from inferd.common.codec import UNLIMITED
from inferd.common.errors import InferdError, invalid
from inferd.daemon.frontends import http_codec

HEADER = struct.Struct("<Q")
OK, ERROR, MEMORY = 0, 1, 2
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Killed when the daemon exits, however it exits (and gone already if it did)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def _limit_memory(extra: int) -> None:
    """Address space: what the process has now (the interpreter, numpy) and `extra` more. A
    backstop: json_offload kills a decoder whose resident memory passes the bound first."""
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, size + extra))


def decode(body: bytearray, max_value_elements: int) -> tuple:
    request, fmt = http_codec.decode_request(body, None, UNLIMITED)
    count = sum(a.size for a in request.inputs.values() if a.dtype.kind == "O")
    if count > max_value_elements:
        raise invalid(f"{count:,} BYTES elements pass this request's limit of {max_value_elements:,} "
                      "(server.max_value_elements: each is a Python object in the daemon)")
    return request, fmt


def _answer(body: bytearray, max_value_elements: int) -> tuple[int, bytes]:
    try:
        return OK, pickle.dumps(decode(body, max_value_elements), protocol=5)
    except InferdError as e:
        return (MEMORY, b"") if "Not enough memory" in e.message else (ERROR, e.message.encode())
    except (MemoryError, SystemError):  # orjson: SystemError, or a JSONDecodeError below, when out of memory
        return MEMORY, b""


def _read(stream, n: int) -> bytearray | None:
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        read = stream.readinto(view[got:])
        if not read:
            return None
        got += read
    return buffer


def _skip(stdin, length: int) -> None:
    while length > 0 and (chunk := stdin.read(min(length, 1 << 20))):
        length -= len(chunk)


def serve(stdin, stdout, max_value_elements: int) -> None:
    while (head := _read(stdin, HEADER.size)) is not None:
        (length,) = HEADER.unpack(head)
        try:
            body = _read(stdin, length)
        except MemoryError:  # the body alone is over the limit: read it through and say so
            _skip(stdin, length)
            kind, payload = MEMORY, b""
        else:
            if body is None:
                return
            kind, payload = _answer(body, max_value_elements)
            del body
        stdout.write(HEADER.pack(1 + len(payload)) + bytes([kind]))
        stdout.write(payload)
        stdout.flush()


def main() -> None:
    parent, memory_bytes, max_value_elements = map(int, sys.argv[1:4])
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the daemon's to handle
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the answers
    stdin = os.fdopen(os.dup(0), "rb", buffering=0)
    _limit_memory(2 * memory_bytes)
    serve(stdin, stdout, max_value_elements)


if __name__ == "__main__":
    main()
