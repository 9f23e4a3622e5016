"""GPU paths for real, on a machine with an NVIDIA GPU, its driver, nvidia-ml-py and
onnxruntime-gpu; skipped elsewhere (these CI machines have no GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _gpu_ready() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return "NVML sees no GPU"
    except Exception as e:
        return f"no NVML: {type(e).__name__}: {e}"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    return None


WHY_NOT = _gpu_ready()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


def test_gpu_batch_limit_follows_free_gpu_memory():
    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_memory.py"
    run = subprocess.run([sys.executable, str(script), "--row-mib", "64"], capture_output=True, text=True, timeout=600)
    print(run.stdout, run.stderr)
    assert run.returncode == 0 and "PASS" in run.stdout
