"""pb_utils' tensors and errors: Tensor, TritonError, TritonModelException and the datatype
tables of Triton's Python backend (triton_python_backend_utils), for Triton Python models
served unchanged. Only numpy here: the module is imported in a model's worker."""

from __future__ import annotations

import struct

import numpy as np

# Triton's TRITONSERVER_DataType numbers, as Tensor.triton_dtype() returns them.
_TYPES = (
    (1, "TYPE_BOOL", np.bool_), (2, "TYPE_UINT8", np.uint8), (3, "TYPE_UINT16", np.uint16),
    (4, "TYPE_UINT32", np.uint32), (5, "TYPE_UINT64", np.uint64), (6, "TYPE_INT8", np.int8),
    (7, "TYPE_INT16", np.int16), (8, "TYPE_INT32", np.int32), (9, "TYPE_INT64", np.int64),
    (10, "TYPE_FP16", np.float16), (11, "TYPE_FP32", np.float32), (12, "TYPE_FP64", np.float64),
    (13, "TYPE_STRING", np.object_),
)
TRITON_STRING_TO_NUMPY = {name: (bool if name == "TYPE_BOOL" else t) for _, name, t in _TYPES}
_CODE_TO_NUMPY = {code: t for code, _, t in _TYPES}
_NUMPY_TO_CODE = {np.dtype(t): code for code, _, t in _TYPES}
_NUMPY_TO_STRING = {np.dtype(t): name for _, name, t in _TYPES}


def triton_string_to_numpy(triton_type_string: str):
    """"TYPE_FP32" -> np.float32 (TYPE_STRING: np.object_)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def numpy_to_triton_string(dtype) -> str | None:
    """np.float32 -> "TYPE_FP32"; bytes and str arrays are TYPE_STRING; None if Triton has no such type."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SU":
        return "TYPE_STRING"
    return _NUMPY_TO_STRING.get(dtype)


def triton_to_numpy_type(data_type: int):
    return _CODE_TO_NUMPY.get(data_type)


def numpy_to_triton_type(data_type) -> int | None:
    dtype = np.dtype(data_type)
    if dtype.kind == "S":
        return 13
    return _NUMPY_TO_CODE.get(dtype)


def serialize_byte_tensor(input_tensor: np.ndarray):
    """Each element as a 4-byte little-endian length and its bytes, in C order (Triton's
    serialization of a BYTES tensor), as a uint8 array; None for an empty or non-bytes tensor."""
    if input_tensor.size == 0 or not (input_tensor.dtype == np.object_ or input_tensor.dtype.type == np.bytes_):
        return None
    out = bytearray()
    for item in input_tensor.reshape(-1, order="C").tolist():
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        out += struct.pack("<I", len(data)) + data
    return np.frombuffer(bytes(out), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor) -> np.ndarray:
    """The inverse of serialize_byte_tensor: a 1-D object array of bytes."""
    data, items, offset = bytes(encoded_tensor), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        items.append(data[offset:offset + length])
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


class TritonError:
    """An error in a response (InferenceResponse(error=...)): a message and one of Triton's codes."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)
    NAMES = ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
             "CANCELLED")

    def __init__(self, message: str, code: int = 1) -> None:
        if message is None:
            raise TypeError("TritonError needs a message")
        self._message, self._code = str(message), int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def code_name(self) -> str:
        return self.NAMES[self._code] if 0 <= self._code < len(self.NAMES) else "UNKNOWN"

    @classmethod
    def named(cls, message: str, name: str) -> TritonError:
        """The error for one of Triton's code names ("NOT_FOUND"); INTERNAL for a name it lacks."""
        return cls(message, cls.NAMES.index(name) if name in cls.NAMES else cls.INTERNAL)

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self.code_name()})"


class TritonModelException(Exception):
    """What Triton's Python backend raises for a misuse of its API; a model raises it to fail
    its requests (or its load)."""

    def message(self) -> str:
        return str(self)


class Tensor:
    """A named tensor of a request or a response, held as a numpy array (always on the CPU here)."""

    def __init__(self, name: str, numpy_array, triton_dtype: int | None = None) -> None:
        array = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        if array.dtype.kind == "U" or array.dtype == np.void:
            raise TritonModelException("Tensor dtype used for numpy_array is not supported by Python backend. "
                                       "Please use np.object_ instead.")
        if triton_dtype is not None:
            wanted = triton_to_numpy_type(triton_dtype)
            if wanted is None:
                raise TritonModelException(f"unknown Triton datatype {triton_dtype}")
            if array.dtype != wanted:  # reinterpreted, as Triton does
                array = array.view(wanted)
        elif numpy_to_triton_type(array.dtype) is None:
            raise TritonModelException(f"tensor {name!r}: numpy dtype {array.dtype} has no Triton datatype")
        self._name, self._array = str(name), array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if not self._array.flags.writeable:  # a view of the batch's shared memory: Triton's arrays are writable
            self._array = self._array.copy()
        return self._array

    def triton_dtype(self) -> int:
        return numpy_to_triton_type(self._array.dtype)

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self):
        """A DLPack capsule of the tensor (numpy's: numeric dtypes only)."""
        return self.as_numpy().__dlpack__()  # (numpy exports no read-only array)

    def __dlpack__(self, stream=None):
        return self.as_numpy().__dlpack__()

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor) -> Tensor:
        """A Tensor from an object with __dlpack__ (a torch tensor, a numpy array) or a DLPack capsule."""
        if hasattr(dlpack_tensor, "__dlpack__"):
            if hasattr(dlpack_tensor, "cpu") and hasattr(dlpack_tensor, "is_cuda"):  # a torch tensor
                dlpack_tensor = dlpack_tensor.detach().cpu()
            return Tensor(name, np.from_dlpack(dlpack_tensor))
        return Tensor(name, np.from_dlpack(_Capsule(dlpack_tensor)))


class _Capsule:
    """A bare DLPack capsule (to_dlpack's) as numpy reads one: a CPU tensor's."""

    def __init__(self, capsule) -> None:
        self._capsule = capsule

    def __dlpack__(self, stream=None, **_):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._array.dtype}, {list(self._array.shape)})"
