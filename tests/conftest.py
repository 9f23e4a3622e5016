"""Shared fixtures: generated model repositories and a running daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_models  # noqa: E402
from daemon_process import DaemonProcess  # noqa: E402


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """The bundled examples, a model without a batch dimension, a slow one, one that holds its
    queue (for queue-full cases) and a corrupt file."""
    root = tmp_path_factory.mktemp("models")
    make_models.make_examples(root)
    make_models.build_fixed(root / "fixed.onnx")
    make_models.build_slow(root / "slow" / "1" / "model.onnx")
    (root / "slow" / "config.toml").write_text("max_batch_size = 256\nmax_queue_delay_ms = 0\n")
    make_models.build_add_sub(root / "held" / "1" / "model.onnx")
    (root / "held" / "config.toml").write_text("max_batch_size = 8\nmax_queue_rows = 1\nmax_queue_delay_ms = 1000\n")
    (root / "corrupt.onnx").write_bytes(b"this is not an onnx file")
    (root / ".hidden.onnx").write_bytes(b"ignored")
    (root / "partial.onnx.part").write_bytes(b"ignored")
    return root


@pytest.fixture(scope="session")
def daemon(model_repo) -> DaemonProcess:
    """One daemon for the read-mostly tests (each test that changes state starts its own)."""
    with DaemonProcess(model_repo) as d:
        yield d


@pytest.fixture(scope="session")
def reference(model_repo):
    """In-process onnxruntime on the same files: what every served answer must equal."""
    import onnxruntime as ort

    sessions = {}

    def run(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        path = model_repo / f"{model}.onnx"
        if not path.exists():
            path = model_repo / model / "1" / "model.onnx"
        if model not in sessions:
            sessions[model] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session = sessions[model]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    return run
