"""V2 REST inference bodies: JSON, and the binary tensor data extension.

A body with an `Inference-Header-Content-Length` header is a JSON header followed by the
inputs' raw bytes (each input with `parameters.binary_data_size` takes the next that many
bytes, in order). Outputs go back as binary when the request asks (`binary_data` on an output,
or `binary_data_output` for all), otherwise as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import orjson

from inferd.common.codec import ValueBudget, from_list, from_raw, named_items, raw_view, to_list
from inferd.common.errors import clip, invalid
from inferd.common.tensors import datatype_of
from inferd.daemon.requests import InferRequest, InferResponse

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_SLICE = 1 << 18  # an output's elements written as JSON in one loop turn (~10-15 ms of orjson for floats)


@dataclasses.dataclass(slots=True)
class OutputFormat:
    """Which outputs the caller wants as binary."""

    binary_default: bool = False
    binary: dict[str, bool] = dataclasses.field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


def _params(obj: dict, where: str) -> dict:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid(f"{where}: parameters must be an object")
    return params


def json_length(header_length: str | None) -> int | None:
    """The JSON header's length from the Inference-Header-Content-Length header (None: the whole
    body is JSON)."""
    if header_length is None:
        return None
    if not (header_length.isascii() and header_length.isdigit() and len(header_length) <= 18):
        raise invalid(f"{HEADER_LENGTH} must be a non-negative integer, got {clip(header_length)}")
    return int(header_length)


def decode_request(body: bytes | bytearray, header_length: int | None, budget: ValueBudget,
                   shared=None) -> tuple[InferRequest, OutputFormat]:
    """A body (JSON, or a JSON header of `header_length` bytes and binary tensors after it).
    `shared`: reads an input that names a shared memory region (shared_memory.input_reader);
    None where regions cannot be read (a decoder process)."""
    doc, binary = _split_body(body, header_length)
    inputs = doc.get("inputs", [])
    if not isinstance(inputs, list):
        raise invalid("'inputs' must be a list")  # which inputs the model needs is the data plane's check
    tensors = _decode_inputs(inputs, binary, budget, shared)
    fmt = OutputFormat(bool(_params(doc, "request").get("binary_data_output", False)))
    output_parameters = {}
    requested = _decode_outputs(doc.get("outputs"), fmt, output_parameters)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    parameters = _params(doc, "request")
    deadline = None
    if "timeout" in parameters:  # Triton's convention: microseconds the request may wait
        timeout = parameters["timeout"]
        if type(timeout) is not int or timeout < 0:
            raise invalid("parameters.timeout must be a non-negative integer (microseconds)")
        deadline = time.monotonic() + timeout / 1e6
    return InferRequest(tensors, requested, request_id, parameters, deadline, output_parameters), fmt


def _split_body(body: bytes | bytearray, n: int | None) -> tuple[dict, memoryview]:
    """The JSON header as an object, and the binary data after it."""
    if n is None:
        header, binary = body, memoryview(b"")
    else:
        if n > len(body):
            raise invalid(f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
        header, binary = body[:n], memoryview(body)[n:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        raise invalid(f"malformed JSON in the request: {e}") from None
    if not isinstance(doc, dict):
        raise invalid("the request must be a JSON object")
    return doc, binary


def _decode_inputs(inputs: list, binary: memoryview, budget: ValueBudget, shared) -> dict:
    """Each input from its JSON `data`, from the next `binary_data_size` bytes of `binary`, or
    from a shared memory region."""
    tensors = {}
    offset = 0
    for name, item in named_items(inputs):
        params = _params(item, f"input {clip(name)}")
        if "shared_memory_region" in params:
            if "data" in item or "binary_data_size" in params:
                raise invalid(f"input {clip(name)}: shared_memory_region given together with data")
            if shared is None:
                raise invalid(f"input {clip(name)}: a JSON body over server.max_structured_bytes cannot name "
                              "shared memory regions")
            tensors[name] = shared(name, item.get("datatype"), item.get("shape"), params)
        elif "binary_data_size" in params:
            size = params["binary_data_size"]
            if type(size) is not int or size < 0:
                raise invalid(f"input {clip(name)}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise invalid(
                    f"input {clip(name)}: binary data of {size} bytes at offset {offset} runs past the end "
                    f"of the body ({len(binary)} binary bytes): truncated payload?"
                )
            data = binary[offset : offset + size]
            tensors[name] = from_raw(name, item.get("datatype"), item.get("shape"), data, budget)
            offset += size
        elif "data" in item:
            tensors[name] = from_list(name, item.get("datatype"), item.get("shape"), item["data"], budget)
        else:
            raise invalid(f"input {clip(name)} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} bytes of binary data after the header belong to no input")
    return tensors


def _decode_outputs(outputs, fmt: OutputFormat, output_parameters: dict) -> tuple[str, ...] | None:
    """The requested outputs' names (None: all), noting in `fmt` which ones go back as binary
    and in `output_parameters` the parameters of each that has some."""
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise invalid("'outputs' must be a list")
    requested = []
    for i, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"outputs[{i}] must be an object with a 'name'")
        requested.append(item["name"])
        params = _params(item, f"output {clip(item['name'])}")
        if "binary_data" in params:
            fmt.binary[item["name"]] = bool(params["binary_data"])
        if params:
            output_parameters[item["name"]] = params
    return tuple(requested) or None


async def encode_response(response: InferResponse, fmt: OutputFormat,
                          shared: set[str] | None = None) -> tuple[list[bytes], int | None]:
    """The body as parts to write one after another, and the JSON header's length when binary
    data follows it (else None). An output in `shared` was written into a shared memory region:
    it goes back with neither data nor parameters (Triton's C++ client reads any output
    parameters as binary data). A small response is one part, written without giving up the
    loop. A big output asked for as JSON is written JSON_SLICE elements per loop turn (4 M
    floats took ~150 ms of orjson in one call), and its parts are never joined into one copy."""
    outputs = []
    chunks = []
    sliced = []  # the JSON parts of each big output, in order
    for name, array in response.outputs.items():
        entry = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if shared and name in shared:
            outputs.append(entry)
            continue
        if fmt.is_binary(name):
            raw = raw_view(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif array.size > JSON_SLICE:
            sliced.append(await json_in_slices(name, array))
            entry["data"] = _GAP
        else:
            entry["data"] = to_list(name, array)
        outputs.append(entry)
    doc = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        doc["id"] = response.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    parts = [header] if not sliced else _fill_gaps(header, sliced)
    if not chunks:
        return parts, None
    return parts + chunks, sum(map(len, parts))


# Where a big output's data goes in the header: a NUL byte, which orjson never writes (it
# escapes control characters inside strings), so the header splits at it unambiguously.
_GAP = orjson.Fragment(b"\0")


def _fill_gaps(header: bytes, sliced: list[list[bytes]]) -> list[bytes]:
    pieces = header.split(b"\0")
    parts = [pieces[0]]
    for data, after in zip(sliced, pieces[1:]):
        parts += data
        parts.append(after)
    return parts


async def json_in_slices(name: str, array: np.ndarray) -> list[bytes]:
    """A big output's `data` as JSON text in parts, JSON_SLICE elements per loop turn."""
    flat = array.reshape(-1)
    parts = [b"["]
    for start in range(0, flat.size, JSON_SLICE):
        text = orjson.dumps(to_list(name, flat[start : start + JSON_SLICE]), option=orjson.OPT_SERIALIZE_NUMPY)
        parts.append(text[1:-1] if start == 0 else b"," + text[1:-1])
        await asyncio.sleep(0)
    parts.append(b"]")
    return parts
