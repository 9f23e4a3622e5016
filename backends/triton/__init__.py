"""Triton's Python backend API for Triton Python models served unchanged: the module they import
as `triton_python_backend_utils` (pb_utils), the model runner that calls their
TritonPythonModel, their calls to other models (BLS) and their custom metrics."""
