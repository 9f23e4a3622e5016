"""Triton Python models' backends as their worker builds them, for the in-process tests
(tests/integration/test_triton_python_*.py)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from inferd.backends.python import PythonBackend
from inferd.config.model import ModelSettings
from inferd.config.triton_config import read_pbtxt
from inferd.scheduler.worker_spec import WorkerSpec


def backend(root: Path, name: str, **declared) -> PythonBackend:
    """The model's backend as its worker builds it: config.pbtxt (if any) as JSON in the settings."""
    path = root / name / "1" / "model.py"
    subprocess.run(["chmod", "-R", "go-w", str(root)], check=True)
    pbtxt = root / name / "config.pbtxt"
    config = read_pbtxt(pbtxt) if pbtxt.exists() else None
    spec = WorkerSpec.of(name, "1", path, "inferd.backends.python:PythonBackend", ModelSettings(), model_dir=root / name,
                         model_config=config, **declared)
    return PythonBackend(path, spec.settings)


def write_model(root: Path, name: str, body: str, pbtxt: str | None = None) -> Path:
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.py").write_text("import json\nimport numpy as np\nimport triton_python_backend_utils as pb_utils\n"
                                      + textwrap.dedent(body))
    if pbtxt is not None:
        (root / name / "config.pbtxt").write_text(textwrap.dedent(pbtxt))
    return root
