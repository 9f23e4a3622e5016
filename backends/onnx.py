"""ONNX Runtime backend. Imported only inside a worker process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from inferd.backends.base import BackendInputError
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata, TensorSpec, bytes_elements, object_tensor, texts

# onnxruntime's type strings -> V2 datatype names.
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _providers(device: str, gpu: int | None = None) -> list:
    """Execution providers for `device`; with "auto", `gpu` is the GPU the daemon placed it on."""
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"device {device} requested but this onnxruntime has no CUDA provider "
                "(install inferd[gpu], i.e. onnxruntime-gpu, instead of onnxruntime)"
            )
        return [("CUDAExecutionProvider", {"device_id": int(device[5:])}), "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:  # auto
        return [("CUDAExecutionProvider", {"device_id": gpu or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _spec(node) -> TensorSpec:
    datatype = _ORT_TYPES.get(node.type)
    if datatype is None:
        raise RuntimeError(f"tensor {node.name!r} has type {node.type}, which the V2 protocol cannot carry")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, datatype, shape)


class OnnxBackend:
    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path
        self.settings = settings
        self.session: ort.InferenceSession | None = None
        self.device_name = "cpu"  # where it runs, once loaded: "cpu" or "cuda:N"
        self._string_inputs: set[str] = set()
        self._string_outputs: set[str] = set()

    def load(self) -> ModelMetadata:
        options = ort.SessionOptions()
        if self.settings.intra_op_threads:
            options.intra_op_num_threads = self.settings.intra_op_threads
        # Spinning threads would hold a core between runs that the daemon's loop needs (a
        # 2-core machine served gRPC at c=64 at half the rate with them on).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.settings.intra_op_spinning else "0")
        self.session = ort.InferenceSession(
            str(self.path), options, providers=_providers(self.settings.device, self.settings.gpu)
        )
        if self.session.get_providers()[0] == "CUDAExecutionProvider":
            options = self.session.get_provider_options()["CUDAExecutionProvider"]
            self.device_name = f"cuda:{options.get('device_id', 0)}"
        inputs = self._inputs()
        outputs = tuple(_spec(n) for n in self.session.get_outputs())
        self._string_inputs = {t.name for t in inputs if t.datatype == "BYTES"}
        self._string_outputs = {t.name for t in outputs if t.datatype == "BYTES"}
        return ModelMetadata(self.platform, inputs, outputs)

    def _inputs(self) -> tuple[TensorSpec, ...]:
        """The graph's inputs, and those of its initializers a request may override (an input
        with a default value) that config.toml declares as inputs. An optional input must be
        one of the latter: the runtime refuses to run without any of the former."""
        required = tuple(_spec(n) for n in self.session.get_inputs())
        refused = sorted({t.name for t in required} & set(self.settings.optional_inputs))
        if refused:
            raise RuntimeError(f"the model's configuration makes input {refused[0]!r} optional, but the ONNX graph needs it: only an "
                               "input with a default value (an initializer the graph lists as an input) may be left out")
        declared = {t.name for t in self.settings.inputs}
        defaults = tuple(_spec(n) for n in self.session.get_overridable_initializers() if n.name in declared)
        return required + defaults

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        feeds = {name: self._to_strings(name, a) if name in self._string_inputs else a for name, a in inputs.items()}
        results = self.session.run(outputs, feeds)
        return {
            name: _to_bytes(r) if name in self._string_outputs else r for name, r in zip(outputs, results)
        }

    def unload(self) -> None:
        self.session = None

    @staticmethod
    def _to_strings(name: str, array: np.ndarray) -> np.ndarray:
        # onnxruntime string tensors hold text; a bytes element would be stored as its repr.
        try:
            return object_tensor(texts(array), array.shape)
        except UnicodeDecodeError:
            raise BackendInputError(f"input {name!r} is a string tensor: its BYTES elements must be UTF-8") from None


def _to_bytes(array: np.ndarray) -> np.ndarray:
    return object_tensor(bytes_elements(array), array.shape)
