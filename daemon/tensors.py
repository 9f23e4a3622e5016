"""Wire <-> numpy conversions shared by the front-ends (HTTP JSON and binary now; gRPC's typed
contents and raw_input_contents use the same two entry points).

Every malformed tensor raises InferdError(INVALID_ARGUMENT) naming the tensor.
"""

from __future__ import annotations

import struct

import numpy as np

from inferd.config.errors import ErrorCode, InferdError
from inferd.config.tensors import DATATYPES, element_count

_LENGTH = struct.Struct("<I")


def _bad(message: str) -> InferdError:
    return InferdError(ErrorCode.INVALID_ARGUMENT, message)


def check_datatype_and_shape(name: str, datatype, shape) -> tuple[np.dtype, tuple[int, ...]]:
    if datatype not in DATATYPES:
        raise _bad(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    return DATATYPES[datatype], tuple(shape)


def from_raw(name: str, datatype: str, shape, data) -> np.ndarray:
    """A tensor from its raw bytes: little-endian values, or length-prefixed elements for BYTES."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = element_count(shape)
    if datatype == "BYTES":
        return _split_bytes(name, data, count).reshape(shape)
    if len(data) != count * dtype.itemsize:
        raise _bad(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def from_list(name: str, datatype: str, shape, data) -> np.ndarray:
    """A tensor from a (flat or nested) list of values, as in V2 JSON."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = element_count(shape)
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: data must be a list, got {type(data).__name__}")
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(x, str) for x in flat):
            raise _bad(f"input {name!r}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [x.encode() for x in flat]
    else:
        try:
            array = np.asarray(data, dtype=dtype).reshape(-1)
        except (ValueError, TypeError, OverflowError) as e:
            raise _bad(f"input {name!r}: data is not a regular list of {datatype} values ({e})") from None
    if array.size != count:
        raise _bad(f"input {name!r}: shape {list(shape)} needs {count} elements, got {array.size}")
    return array.reshape(shape)


def from_values(name: str, datatype: str, shape, values) -> np.ndarray:
    """A tensor from a flat sequence of typed values (gRPC's InferTensorContents)."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = element_count(shape)
    if len(values) != count:
        raise _bad(f"input {name!r}: shape {list(shape)} needs {count} elements, got {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except (ValueError, TypeError, OverflowError) as e:
        raise _bad(f"input {name!r}: values do not fit {datatype} ({e})") from None


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


def _split_bytes(name: str, data, count: int) -> np.ndarray:
    view = memoryview(data)
    items = []
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise _bad(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (n,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise _bad(f"input {name!r}: a BYTES element of {n} bytes runs past the end of the data")
        items.append(bytes(view[pos : pos + n]))
        pos += n
    if len(items) != count:
        raise _bad(f"input {name!r}: shape needs {count} BYTES elements, got {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def to_raw(array: np.ndarray) -> bytes:
    """Raw bytes of a tensor: little-endian values, or 4-byte-length-prefixed BYTES elements."""
    if array.dtype == object:
        parts = []
        for x in array.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode()
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def bytes_to_text(name: str, array: np.ndarray) -> list[str]:
    """A BYTES tensor's elements as JSON strings; non-UTF-8 content has to travel as binary."""
    try:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    except UnicodeDecodeError:
        raise _bad(f"output {name!r} holds non-UTF-8 bytes: request it with binary_data") from None
