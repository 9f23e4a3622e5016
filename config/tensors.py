"""Tensor vocabulary shared by the daemon, the scheduler and the backends.

One table maps the V2 / Open Inference Protocol datatype names to numpy; BYTES tensors are
numpy object arrays whose elements are `bytes`.
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
    def from_dict(cls, data: dict) -> "TensorSpec":
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want == -1 or want == got for want, got in zip(self.shape, shape)
        )


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
