"""Model runtimes and the worker process that hosts one.

Nothing here imports a runtime at module level: onnxruntime and torch are imported
inside the worker process only, so the daemon stays small and starts fast.
"""

# Model file extension -> "module:Class" of the backend that runs it, imported in the worker.
BACKENDS = {
    "onnx": "inferd.backends.onnx:OnnxBackend",
    "pt": "inferd.backends.pytorch:TorchBackend",
    "pt2": "inferd.backends.pytorch:TorchBackend",
    "py": "inferd.backends.python:PythonBackend",
    "mlflow": "inferd.backends.mlflow:MLflowBackend",  # a directory holding MLmodel (not an extension)
}
MODEL_EXTENSIONS = tuple(BACKENDS)


def backend_path(extension: str) -> str | None:
    return BACKENDS.get(extension)
