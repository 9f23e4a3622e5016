"""Text and typed-value wire formats <-> numpy, for the front-ends (V2 JSON, gRPC typed
contents). Raw bytes (from_raw/to_raw) live in inferd.config.tensors, shared with the client.

Every malformed tensor raises InferdError(INVALID_ARGUMENT) naming the tensor.
"""

from __future__ import annotations

import numpy as np

from inferd.config.errors import ErrorCode, InferdError
from inferd.config.tensors import check_datatype_and_shape, element_count


def _bad(message: str) -> InferdError:
    return InferdError(ErrorCode.INVALID_ARGUMENT, message)


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


def bytes_to_text(name: str, array: np.ndarray) -> list[str]:
    """A BYTES tensor's elements as JSON strings; non-UTF-8 content has to travel as binary."""
    try:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    except UnicodeDecodeError:
        raise _bad(f"output {name!r} holds non-UTF-8 bytes: request it with binary_data") from None
