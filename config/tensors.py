"""Tensor vocabulary shared by the daemon, the scheduler and the backends.

One table maps the V2 / Open Inference Protocol datatype names to numpy; BYTES tensors are
numpy object arrays whose elements are `bytes`.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np

from inferd.config.errors import ErrorCode, InferdError

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_NUMPY = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """V2 datatype name of a numpy array (str arrays count as BYTES)."""
    if array.dtype.kind in "US":
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {array.dtype} has no V2 datatype") from None


@dataclasses.dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor as the V2 metadata shows it: -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))

    def narrowed_by(self, other: "TensorSpec") -> bool:
        """`other` is this tensor with the same datatype and rank, and at most some of its
        dynamic dimensions fixed (what config.toml may say of a model file's tensor)."""
        return other.datatype == self.datatype and len(other.shape) == len(self.shape) and all(
            mine in (-1, theirs) for mine, theirs in zip(self.shape, other.shape)
        )

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape):  # a plain loop: checked on every request
            if want != got and want != -1:
                return False
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What a backend reports about a loaded model file."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """Every tensor has a dynamic first dimension, so requests can be stacked along it."""
        return all(t.shape and t.shape[0] == -1 for t in self.inputs + self.outputs)

    def to_dict(self) -> dict:
        return {
            "platform": self.platform,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelMetadata":
        return cls(
            str(data["platform"]),
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
        )


def element_count(shape) -> int:
    return math.prod(shape)


# Raw tensor bytes, shared by every binary wire format (V2 binary extension, gRPC raw contents,
# the Unix-socket protocol, the worker IPC): little-endian values, or for BYTES each element as
# a 4-byte little-endian length and its bytes.

_LENGTH = struct.Struct("<I")


def _bad(message: str) -> InferdError:
    return InferdError(ErrorCode.INVALID_ARGUMENT, message)


def check_datatype_and_shape(name: str, datatype, shape) -> tuple[np.dtype, tuple[int, ...]]:
    dtype = DATATYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise _bad(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    if type(shape) is list:
        for d in shape:  # a plain loop: checked for every tensor of every request
            if type(d) is not int or d < 0:
                break
        else:
            return dtype, tuple(shape)
    raise _bad(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")


def from_raw(name: str, datatype: str, shape, data) -> np.ndarray:
    """A tensor from its raw bytes: little-endian values, or length-prefixed elements for BYTES."""
    dtype, shape = check_datatype_and_shape(name, datatype, shape)
    count = math.prod(shape)
    if datatype == "BYTES":
        return _split_bytes(name, data, count).reshape(shape)
    if len(data) != count * dtype.itemsize:
        raise _bad(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, got {len(data)}"
        )
    return np.ndarray(shape, dtype, data)  # a view of the bytes, shaped in one call


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
    if array.dtype.kind == "O":
        parts = []
        for x in array.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode()
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return array.tobytes()  # C order, whatever the array's layout


