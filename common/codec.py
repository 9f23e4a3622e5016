"""Tensors <-> their wire forms, one owner for each form:

- raw bytes (`from_raw` / `to_raw`): the V2 binary extension, gRPC raw contents, the Unix-socket
  protocol and the client: little-endian values, or for BYTES each element as a 4-byte
  little-endian length and its bytes;
- JSON lists (`from_list` / `to_list`): V2 JSON `data`, BYTES as UTF-8 strings;
- typed values (`from_values`): gRPC's InferTensorContents.

Every malformed tensor raises InferdError(INVALID_ARGUMENT) naming the tensor.

What a request may make the daemon build value by value (each a Python object: BYTES elements in
any form, JSON `data`, gRPC typed contents) is counted against its `ValueBudget` before the work
starts, so decoding stays a short, bounded step on the event loop (splitting 65,536 BYTES
elements takes ~20 ms on a slow core; 16 M of them held the loop 13-22 s). Numeric tensors in raw form cost
nothing per element: they are views of the bytes received.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

import numpy as np

from inferd.common.errors import clip, invalid
from inferd.common.tensors import DATATYPES, bytes_elements, object_tensor, texts

_LENGTH = struct.Struct("<I")
MAX_RANK = 32
MAX_SPAN = 1 << 48  # the product of a shape's dimensions, a 0 counted as 1: numpy's bound is near


class ValueBudget:
    """How many more tensor elements one request may send as separate values; None: no limit
    (the client reading its server's answer)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int | None):
        self.limit = limit
        self.left = limit

    def take(self, name: str, count: int, what: str) -> None:
        if self.left is None:
            return
        if count > self.left:
            raise invalid(
                f"input {clip(name)}: {count:,} {what} would pass this request's limit of {self.limit:,} values sent "
                "one by one (server.max_value_elements); numeric tensors in binary form are not counted"
            )
        self.left -= count


UNLIMITED = ValueBudget(None)


def check_datatype_and_shape(name: str, datatype, shape) -> tuple[np.dtype, tuple[int, ...]]:
    dtype = DATATYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise invalid(f"input {clip(name)}: unknown datatype {clip(datatype)}; expected one of {', '.join(DATATYPES)}")
    if type(shape) is list:
        for d in shape:  # a plain loop: checked for every tensor of every request
            if type(d) is not int or d < 0:
                break
        else:
            if len(shape) > MAX_RANK or math.prod(d or 1 for d in shape) > MAX_SPAN:
                raise invalid(f"input {clip(name)}: shape {clip(shape)} is too large (at most {MAX_RANK} dimensions, "
                              f"{MAX_SPAN:,} elements)")
            return dtype, tuple(shape)
    raise invalid(f"input {clip(name)}: shape must be a list of non-negative integers, got {clip(shape)}")


def named_items(items: list) -> Iterator[tuple[str, dict]]:
    """(name, item) for each entry of a request's list of input tensors (V2 JSON, the Unix
    socket's msgpack): each a map with a string 'name', no name twice."""
    seen = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"inputs[{i}] must be a map (an object) with a 'name'")
        name = item["name"]
        if name in seen:
            raise invalid(f"input {clip(name)} appears twice")
        seen.add(name)
        yield name, item


# -- raw bytes ---------------------------------------------------------------------------------

def from_raw(name: str, datatype: str, shape, data, budget: ValueBudget = UNLIMITED) -> np.ndarray:
    """A tensor from its raw bytes: little-endian values, or length-prefixed elements for BYTES."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = math.prod(shape)
    if datatype == "BYTES":
        budget.take(name, count, "BYTES elements")
        return object_tensor(_split_bytes(name, data, count), shape)
    if len(data) != count * dtype.itemsize:
        raise invalid(
            f"input {clip(name)}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, got {len(data)}"
        )
    return np.ndarray(shape, dtype, data)  # a view of the bytes, shaped in one call


def _split_bytes(name: str, data, count: int) -> list[bytes]:
    """`count` length-prefixed elements. Slicing one bytes object makes one object per element
    (a memoryview slice made two): ~0.3 us an element instead of ~0.75."""
    data = data if type(data) is bytes else bytes(data)
    end = len(data)
    unpack = _LENGTH.unpack_from
    items = []
    append = items.append
    pos = 0
    while pos < end and len(items) < count:
        if pos + 4 > end:
            raise invalid(f"input {clip(name)}: BYTES data ends inside an element's 4-byte length")
        (n,) = unpack(data, pos)
        pos += 4
        if pos + n > end:
            raise invalid(f"input {clip(name)}: a BYTES element of {n} bytes runs past the end of the data")
        append(data[pos : pos + n])
        pos += n
    if len(items) != count or pos != end:
        raise invalid(f"input {clip(name)}: shape needs {count} BYTES elements, the data holds "
                      f"{'more' if pos != end else len(items)}")
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


def raw_view(array: np.ndarray) -> bytes | memoryview:
    """to_raw without copying a numeric tensor that is already C-contiguous: a view of its
    memory (a 48 MiB answer copied once less, in one step on the loop)."""
    if array.dtype.kind in "OUS":
        return to_raw(array)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


# -- JSON lists --------------------------------------------------------------------------------

def from_list(name: str, datatype: str, shape, data, budget: ValueBudget = UNLIMITED) -> np.ndarray:
    """A tensor from a (flat or nested) list of values, as in V2 JSON."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = math.prod(shape)
    if not isinstance(data, list):
        raise invalid(f"input {clip(name)}: data must be a list, got {type(data).__name__}")
    budget.take(name, count, "values")
    if datatype == "BYTES":
        flat = _flatten(data, count)
        if not all(isinstance(x, str) for x in flat):
            raise invalid(f"input {clip(name)}: BYTES data must be strings")
        array = object_tensor([x.encode() for x in flat])
    else:
        try:
            array = (_integers(name, datatype, dtype, data) if dtype.kind in "iu" else np.asarray(data, dtype=dtype)).reshape(-1)
        except (ValueError, TypeError, OverflowError) as e:
            raise invalid(f"input {clip(name)}: data is not a regular list of {datatype} values ({e})") from None
    if array.size != count:
        raise invalid(f"input {clip(name)}: shape {list(shape)} needs {count} elements, got {array.size}")
    return array.reshape(shape)


def _integers(name: str, datatype: str, dtype: np.dtype, data: list) -> np.ndarray:
    """JSON numbers as integers. numpy checks the range of Python ints but casts a float by
    dropping its fraction (or wrapping it), so the values are read as floats too and must
    agree: 2.0 passes, 1.5, 1e20 and nan do not."""
    with np.errstate(invalid="ignore", over="ignore"):
        array = np.asarray(data, dtype=dtype)
        if not np.array_equal(np.asarray(data, dtype=np.float64), array.astype(np.float64)):
            raise invalid(f"input {clip(name)}: {datatype} data holds a number with a fraction or out of range")
    return array


def _flatten(data: list, limit: int) -> list:
    """The leaves of nested lists, stopping after `limit` + 1 (the caller reports the count)."""
    out = []
    stack = [iter(data)]
    while stack and len(out) <= limit:
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
        raise invalid(f"output {clip(name)} holds non-UTF-8 bytes: request it with binary_data") from None


# -- typed values ------------------------------------------------------------------------------

def from_values(name: str, datatype: str, shape, values, budget: ValueBudget = UNLIMITED) -> np.ndarray:
    """A tensor from a flat sequence of typed values (gRPC's InferTensorContents)."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = math.prod(shape)
    if len(values) != count:
        raise invalid(f"input {clip(name)}: shape {list(shape)} needs {count} elements, got {len(values)}")
    budget.take(name, count, "values")
    if datatype == "BYTES":
        return object_tensor(list(values), shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except (ValueError, TypeError, OverflowError) as e:
        raise invalid(f"input {clip(name)}: values do not fit {datatype} ({e})") from None
