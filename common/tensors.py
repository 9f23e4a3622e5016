"""Tensor vocabulary shared by the daemon, the scheduler, the backends and the client.

One table maps the V2 / Open Inference Protocol datatype names to numpy. BYTES tensors are
numpy object arrays whose elements are `bytes`; the functions at the end are the one place
that builds, reads and sizes them (every wire format and backend calls them).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

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
    def from_dict(cls, data: dict) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))

    def narrowed_by(self, other: TensorSpec) -> bool:
        """`other` is this tensor with the same datatype and rank, and at most some of its
        dynamic dimensions fixed (what config.toml may say of a model file's tensor)."""
        return other.datatype == self.datatype and len(other.shape) == len(self.shape) and all(
            mine in (-1, theirs) for mine, theirs in zip(self.shape, other.shape)
        )

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        for want, got in zip(self.shape, shape):  # noqa: SIM110 (a plain loop: checked on every request)
            if want != got and want != -1:
                return False
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What a backend reports about a loaded model file."""

    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decoupled: bool = False  # sends 0..N responses per request (a Python model's `decoupled = True`)
    max_batch_size: int | None = None  # the model's own limit (a Triton model's max_batch_size; None: none)

    @property
    def batchable(self) -> bool:
        """Every tensor has a dynamic first dimension, so requests can be stacked along it."""
        return all(t.shape and t.shape[0] == -1 for t in self.inputs + self.outputs)

    def to_dict(self) -> dict:
        return {
            "platform": self.platform,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "decoupled": self.decoupled,
            "max_batch_size": self.max_batch_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelMetadata:
        return cls(
            str(data["platform"]),
            tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            bool(data.get("decoupled", False)),
            data.get("max_batch_size"),
        )


def element_count(shape) -> int:
    return math.prod(shape)


# -- BYTES tensors -----------------------------------------------------------------------------

def object_tensor(elements: list, shape=None) -> np.ndarray:
    """An object array from a flat list of elements (bytes for a BYTES tensor), shaped as
    `shape` if given. (np.array(elements, object) would nest sequence elements into extra
    dimensions; filling an empty object array never does.)"""
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array if shape is None else array.reshape(shape)


def as_bytes(element) -> bytes:
    """One BYTES element as bytes: str is encoded as UTF-8; anything else is a TypeError."""
    if isinstance(element, bytes):
        return element
    if isinstance(element, str):
        return element.encode()
    if isinstance(element, (bytearray, memoryview)):
        return bytes(element)
    raise TypeError(f"a BYTES element must be bytes or str, got {type(element).__name__}")


def bytes_elements(array: np.ndarray) -> list[bytes]:
    """A BYTES (or numpy str) tensor's elements, flat, as bytes."""
    return [as_bytes(x) for x in array.reshape(-1).tolist()]


def texts(array: np.ndarray) -> list[str]:
    """A BYTES tensor's elements, flat, decoded as UTF-8 (UnicodeDecodeError if one is not)."""
    return [x.decode() if isinstance(x, bytes) else str(x) for x in array.reshape(-1).tolist()]


def payload_bytes(array: np.ndarray) -> int:
    """The bytes a tensor's values take (BYTES: its elements' lengths)."""
    if array.dtype.kind == "O":
        return sum(len(x) for x in array.reshape(-1).tolist())
    return array.nbytes
