"""Tensors <-> their wire forms, one owner for each form:

- raw bytes (`from_raw` / `to_raw`): the V2 binary extension, gRPC raw contents, the Unix-socket
  protocol and the client: little-endian values, or for BYTES each element as a 4-byte
  little-endian length and its bytes;
- JSON lists (`from_list` / `to_list`): V2 JSON `data`, BYTES as UTF-8 strings;
- typed values (`from_values`): gRPC's InferTensorContents.

Every malformed tensor raises InferdError(INVALID_ARGUMENT) naming the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

import numpy as np

from inferd.common.errors import invalid
from inferd.common.tensors import DATATYPES, bytes_elements, object_tensor, texts

_LENGTH = struct.Struct("<I")



def check_datatype_and_shape(name: str, datatype, shape) -> tuple[np.dtype, tuple[int, ...]]:
    dtype = DATATYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise invalid(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    if type(shape) is list:
        for d in shape:  # a plain loop: checked for every tensor of every request
            if type(d) is not int or d < 0:
                break
        else:
            return dtype, tuple(shape)
    raise invalid(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")


def named_items(items: list) -> Iterator[tuple[str, dict]]:
    """(name, item) for each entry of a request's list of input tensors (V2 JSON, the Unix
    socket's msgpack): each a map with a string 'name', no name twice."""
    seen = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"inputs[{i}] must be a map (an object) with a 'name'")
        name = item["name"]
        if name in seen:
            raise invalid(f"input {name!r} appears twice")
        seen.add(name)
        yield name, item


# -- raw bytes ---------------------------------------------------------------------------------

def from_raw(name: str, datatype: str, shape, data) -> np.ndarray:
    """A tensor from its raw bytes: little-endian values, or length-prefixed elements for BYTES."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = math.prod(shape)
    if datatype == "BYTES":
        return object_tensor(_split_bytes(name, data, count), shape)
    if len(data) != count * dtype.itemsize:
        raise invalid(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, got {len(data)}"
        )
    return np.ndarray(shape, dtype, data)  # a view of the bytes, shaped in one call


def _split_bytes(name: str, data, count: int) -> list[bytes]:
    view = memoryview(data)
    items = []
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise invalid(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (n,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise invalid(f"input {name!r}: a BYTES element of {n} bytes runs past the end of the data")
        items.append(bytes(view[pos : pos + n]))
        pos += n
    if len(items) != count:
        raise invalid(f"input {name!r}: shape needs {count} BYTES elements, got {len(items)}")
    return items


def to_raw(array: np.ndarray) -> bytes:
    """Raw bytes of a tensor: little-endian values, or 4-byte-length-prefixed BYTES elements."""
    if array.dtype.kind in "OUS":
        parts = []
        for b in bytes_elements(array):
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return array.tobytes()  # C order, whatever the array's layout


# -- JSON lists --------------------------------------------------------------------------------

def from_list(name: str, datatype: str, shape, data) -> np.ndarray:
    """A tensor from a (flat or nested) list of values, as in V2 JSON."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = math.prod(shape)
    if not isinstance(data, list):
        raise invalid(f"input {name!r}: data must be a list, got {type(data).__name__}")
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(x, str) for x in flat):
            raise invalid(f"input {name!r}: BYTES data must be strings")
        array = object_tensor([x.encode() for x in flat])
    else:
        try:
            array = np.asarray(data, dtype=dtype).reshape(-1)
        except (ValueError, TypeError, OverflowError) as e:
            raise invalid(f"input {name!r}: data is not a regular list of {datatype} values ({e})") from None
    if array.size != count:
        raise invalid(f"input {name!r}: shape {list(shape)} needs {count} elements, got {array.size}")
    return array.reshape(shape)


def _flatten(data: list) -> list:
    out = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def to_list(name: str, array: np.ndarray):
    """A tensor's values for V2 JSON `data`: a flat array (orjson writes numpy arrays), or for
    BYTES a list of strings; non-UTF-8 content has to travel as binary."""
    if array.dtype.kind not in "OUS":
        return array.reshape(-1)
    try:
        return texts(array)
    except UnicodeDecodeError:
        raise invalid(f"output {name!r} holds non-UTF-8 bytes: request it with binary_data") from None


# -- typed values ------------------------------------------------------------------------------

def from_values(name: str, datatype: str, shape, values) -> np.ndarray:
    """A tensor from a flat sequence of typed values (gRPC's InferTensorContents)."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = math.prod(shape)
    if len(values) != count:
        raise invalid(f"input {name!r}: shape {list(shape)} needs {count} elements, got {len(values)}")
    if datatype == "BYTES":
        return object_tensor(list(values), shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except (ValueError, TypeError, OverflowError) as e:
        raise invalid(f"input {name!r}: values do not fit {datatype} ({e})") from None
