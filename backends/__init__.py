"""Model runtimes and the worker process that hosts one.

Nothing here imports a runtime at module level: onnxruntime (and later torch) are imported
inside the worker process only, so the daemon stays small and starts fast.
"""

# Model file extension -> "module:Class" of the backend that runs it, imported in the worker.
BACKENDS = {
    "onnx": "inferd.backends.onnx:OnnxBackend",
}
# Extensions the model repository recognises; those without a backend yet load as FAILED.
MODEL_EXTENSIONS = ("onnx", "pt", "pt2", "py")


def backend_path(extension: str) -> str | None:
    return BACKENDS.get(extension)
