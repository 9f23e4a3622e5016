"""Triton's `triton_python_backend_utils` for Triton Python models served unchanged: the shim
(inferd.backends.triton.model) installs this module as sys.modules["triton_python_backend_utils"]
before it runs a model.py, so `import triton_python_backend_utils as pb_utils` finds it.

The names are Triton's (its python_backend's documented API); what they do is inferd's: a
request's tensors are numpy arrays on the CPU, a model's calls to other models (exec,
async_exec) go to the daemon through inferd.backends.triton.bls, its log lines become the
worker's log events, its custom metrics (MetricFamily) are inferd.backends.triton.metrics'.
"""

from __future__ import annotations

import structlog

from inferd.backends.triton.pb_config import (
    ModelConfig,
    get_input_config_by_name,
    get_output_config_by_name,
    using_decoupled_model_transaction_policy,
)
from inferd.backends.triton.pb_requests import (
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    InferenceRequest,
    InferenceResponse,
    InferenceResponseSender,
    ResponseIterator,
)
from inferd.backends.triton.pb_tensors import (
    TRITON_STRING_TO_NUMPY,
    Tensor,
    TritonError,
    TritonModelException,
    deserialize_bytes_tensor,
    numpy_to_triton_string,
    numpy_to_triton_type,
    serialize_byte_tensor,
    triton_string_to_numpy,
    triton_to_numpy_type,
)

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END", "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL", "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL", "TRITON_STRING_TO_NUMPY", "InferenceRequest", "InferenceResponse",
    "InferenceResponseSender", "InferenceTrace", "Logger", "ModelConfig", "PreferredMemory", "ResponseIterator",
    "TRITONSERVER_MEMORY_CPU", "TRITONSERVER_MEMORY_GPU", "Tensor", "TritonError",
    "TritonModelException", "deserialize_bytes_tensor", "get_input_config_by_name", "get_input_tensor_by_name",
    "get_output_config_by_name", "get_output_tensor_by_name", "numpy_to_triton_string", "numpy_to_triton_type",
    "serialize_byte_tensor", "triton_string_to_numpy", "triton_to_numpy_type",
    "using_decoupled_model_transaction_policy",
]

_METRICS = ("MetricFamily", "Metric", "MetricKind")  # inferd.backends.triton.metrics' names
_UNSUPPORTED = ("load_model", "unload_model", "is_model_ready")  # model control from a model

TRITONSERVER_MEMORY_GPU, TRITONSERVER_MEMORY_CPU = 0, 1


class PreferredMemory:
    """Where a BLS call's outputs should be: accepted, and CPU memory it is (inferd's are numpy)."""

    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type, self.preferred_device_id = preferred_memory_type, preferred_device_id


class InferenceTrace:
    """A request's trace: inferd traces none."""

    def get_context(self):
        return None


def get_input_tensor_by_name(inference_request, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


class Logger:
    """Triton's model logger: each line a log event of the worker (logger "inferd.model")."""

    INFO, WARNING, ERROR, VERBOSE = range(4)
    _log = structlog.get_logger("inferd.model")

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        method = ("info", "warning", "error", "debug")[level] if 0 <= level < 4 else "info"
        getattr(Logger._log, method)(str(message))

    @staticmethod
    def log_info(message: str) -> None:
        Logger._log.info(str(message))

    @staticmethod
    def log_warn(message: str) -> None:
        Logger._log.warning(str(message))

    @staticmethod
    def log_error(message: str) -> None:
        Logger._log.error(str(message))

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger._log.debug(str(message))


def __getattr__(name: str):
    """MetricFamily and Metric, from inferd.backends.triton.metrics when a model first names them."""
    if name in _METRICS:
        from inferd.backends.triton import metrics

        return getattr(metrics, name)
    if name in _UNSUPPORTED:
        raise AttributeError(f"triton_python_backend_utils.{name} is not supported by inferd: load and unload "
                             "models through the daemon's repository API")
    raise AttributeError(f"module 'triton_python_backend_utils' has no attribute {name!r}")
