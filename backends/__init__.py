"""Model runtimes and the worker process that hosts one.

Nothing here imports a runtime at module level: onnxruntime and torch are imported
inside the worker process only, so the daemon stays small and starts fast.
"""

# Backend name (config.toml's `backend`) -> "module:Class", imported in the worker. Which
# files each one runs: formats.py.
BACKENDS = {
    "onnx": "inferd.backends.onnx:OnnxBackend",
    "pt": "inferd.backends.pytorch:TorchBackend",
    "pt2": "inferd.backends.pytorch:TorchBackend",
    "py": "inferd.backends.python:PythonBackend",
    "sklearn": "inferd.backends.sklearn:SklearnBackend",
    "xgboost": "inferd.backends.xgboost:XGBoostBackend",
    "lightgbm": "inferd.backends.lightgbm:LightGBMBackend",
    "catboost": "inferd.backends.catboost:CatBoostBackend",
    "tensorflow": "inferd.backends.tensorflow:TensorFlowBackend",  # .keras files and model.savedmodel/ directories
    "mlflow": "inferd.backends.mlflow:MLflowBackend",  # a directory holding MLmodel (not an extension)
}


def backend_path(name: str) -> str | None:
    return BACKENDS.get(name)
