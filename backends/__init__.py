"""Model runtimes and the worker process that hosts one.

Nothing here imports a runtime at module level: onnxruntime and torch are imported
inside the worker process only, so the daemon stays small and starts fast.
"""

# Backend key (config.toml's `backend`, or a file's extension) -> "module:Class" of the backend
# that runs it, imported in the worker.
BACKENDS = {
    "onnx": "inferd.backends.onnx:OnnxBackend",
    "pt": "inferd.backends.pytorch:TorchBackend",
    "pt2": "inferd.backends.pytorch:TorchBackend",
    "py": "inferd.backends.python:PythonBackend",
    "sklearn": "inferd.backends.sklearn:SklearnBackend",
}
# Model file extension -> its backend key, where they differ.
EXTENSIONS = {"onnx": "onnx", "pt": "pt", "pt2": "pt2", "py": "py",
              "joblib": "sklearn", "pkl": "sklearn", "pickle": "sklearn", "skops": "sklearn"}
MODEL_EXTENSIONS = tuple(EXTENSIONS)


def backend_path(extension: str) -> str | None:
    """The backend for a model file's extension (or a backend key)."""
    return BACKENDS.get(EXTENSIONS.get(extension, extension))
