"""Model runtimes and the worker process that hosts one.

Nothing here imports a runtime at module level: onnxruntime and torch are imported
inside the worker process only, so the daemon stays small and starts fast.
"""

# Backend name (a model file's extension, or a framework's name) -> "module:Class" of the
# backend that runs it, imported in the worker.
BACKENDS = {
    "onnx": "inferd.backends.onnx:OnnxBackend",
    "pt": "inferd.backends.pytorch:TorchBackend",
    "pt2": "inferd.backends.pytorch:TorchBackend",
    "py": "inferd.backends.python:PythonBackend",
    "xgboost": "inferd.backends.xgboost:XGBoostBackend",
    "lightgbm": "inferd.backends.lightgbm:LightGBMBackend",
    "catboost": "inferd.backends.catboost:CatBoostBackend",
}
# Model file extension -> backend name, where the extension alone says which (.json and .txt
# could be several frameworks': their content says).
EXTENSIONS = {"onnx": "onnx", "pt": "pt", "pt2": "pt2", "py": "py", "ubj": "xgboost", "cbm": "catboost"}
MODEL_EXTENSIONS = tuple(EXTENSIONS)


def backend_path(extension: str) -> str | None:
    """The backend for a model file's extension, or for a backend's name."""
    return BACKENDS.get(EXTENSIONS.get(extension, extension))
