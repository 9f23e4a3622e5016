"""The Unix-socket protocol's messages (docs/unix-socket-protocol.md) <-> the data plane's
request and response, and its error codes: a table of their own, since the protocol's text
codes must not change when a Python enum does."""

from __future__ import annotations

import time

import msgpack

from inferd.common.codec import ValueBudget, from_raw, named_items, raw_view
from inferd.common.errors import ErrorCode, InferdError, clip, invalid
from inferd.common.tensors import datatype_of
from inferd.daemon.requests import InferRequest, InferResponse

WIRE_CODES = {
    ErrorCode.INVALID_ARGUMENT: "invalid_argument",
    ErrorCode.NOT_FOUND: "not_found",
    ErrorCode.FAILED_PRECONDITION: "failed_precondition",
    ErrorCode.RESOURCE_EXHAUSTED: "resource_exhausted",
    ErrorCode.DEADLINE_EXCEEDED: "deadline_exceeded",
    ErrorCode.CANCELLED: "cancelled",
    ErrorCode.UNAVAILABLE: "unavailable",
    ErrorCode.UNIMPLEMENTED: "unimplemented",
    ErrorCode.INTERNAL: "internal",
}



MAX_FRAME_ITEMS = 65536  # entries of all the arrays and maps in one frame (a request needs a few dozen)


def unpack_frame(frame) -> dict | None:
    """A frame's message; None if it is not valid msgpack, or if its arrays and maps hold more
    than MAX_FRAME_ITEMS entries in all: each entry is a Python object, and 64 MiB of one-byte
    entries would be 64 M of them (seconds of the loop, gigabytes). Tensors travel as bin.
    Every entry takes a byte at least, so a frame of MAX_FRAME_ITEMS bytes or fewer (every
    request of a few KiB) is unpacked without the counting hooks."""
    if len(frame) <= MAX_FRAME_ITEMS:
        try:
            return msgpack.unpackb(frame, raw=False)
        except Exception:
            return None
    items = 0

    def counted(container):
        nonlocal items
        items += len(container)
        if items > MAX_FRAME_ITEMS:
            raise ValueError("too many items")
        return container

    try:
        return msgpack.unpackb(frame, raw=False, list_hook=counted, object_hook=counted,
                               max_array_len=MAX_FRAME_ITEMS, max_map_len=MAX_FRAME_ITEMS)
    except Exception:  # any malformed frame: the caller answers "not valid msgpack"
        return None


def field(msg: dict, key: str, kind: type, default=None):
    """`msg[key]` if it is of `kind` (bool is not an int here), `default` if absent."""
    if key not in msg:
        return default
    value = msg[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise invalid(f"{key!r} must be {kind.__name__}")
    return value


def error_reply(request_id: int, error: InferdError) -> dict:
    return {"id": request_id, "ok": False, "error": {"code": WIRE_CODES[error.code], "message": error.message}}


_NO_REGIONS = "shared memory regions are for HTTP and gRPC; the Unix socket carries tensors itself"


def decode_infer(msg: dict, budget: ValueBudget) -> tuple[str, str, InferRequest]:
    model = field(msg, "model", str)
    if not model:
        raise invalid("'model' is required")
    inputs = field(msg, "inputs", list, [])
    tensors = {}
    for name, item in named_items(inputs):
        if isinstance(item.get("parameters"), dict) and "shared_memory_region" in item["parameters"]:
            raise invalid(_NO_REGIONS)  # (its `data` would be used instead, silently)
        data = item.get("data")
        if not isinstance(data, bytes):
            raise invalid(f"input {clip(name)}: 'data' must be bin (raw little-endian bytes)")
        tensors[name] = from_raw(name, item.get("datatype"), item.get("shape"), data, budget)
    outputs, output_parameters = _requested_outputs(field(msg, "outputs", list))
    timeout_ms = field(msg, "timeout_ms", int)
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
    parameters = field(msg, "parameters", dict, {}) | _sequence_parameters(msg)  # (values: validation.py)
    request = InferRequest(tensors, outputs, field(msg, "request_id", str, ""), parameters, deadline, output_parameters)
    return model, field(msg, "version", str, ""), request


def _requested_outputs(outputs: list | None) -> tuple[tuple[str, ...] | None, dict]:
    """`outputs`: names, or maps {"name": ..., "parameters": {...}} for an output with parameters."""
    if not outputs:
        return None, {}
    names, parameters = [], {}
    for item in outputs:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("parameters", {}), dict):
            names.append(item["name"])
            if item.get("parameters"):
                parameters[item["name"]] = item["parameters"]
            if "shared_memory_region" in parameters.get(item["name"], ()):  # (not written: refused)
                raise invalid(_NO_REGIONS)
        elif isinstance(item, str):
            names.append(item)
        else:
            raise invalid("'outputs' must be a list of names or of {name, parameters} maps")
    return tuple(names), parameters


def _sequence_parameters(msg: dict) -> dict:
    """A stateful model's sequence_id (int or str), sequence_start and sequence_end, as the
    other front-ends' request parameters (checked by the scheduler: inferd.scheduler.sequence_flags)."""
    return {k: msg[k] for k in ("sequence_id", "sequence_start", "sequence_end") if k in msg}


def encode_infer(request_id: int, response: InferResponse) -> dict:
    reply = {
        "id": request_id,
        "ok": True,
        "model": response.model_name,
        "version": response.model_version,
        "outputs": [
            {"name": name, "datatype": datatype_of(a), "shape": list(a.shape), "data": raw_view(a)}
            for name, a in response.outputs.items()
        ],
    }
    if response.id:
        reply["request_id"] = response.id
    return reply
