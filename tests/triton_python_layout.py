"""Triton's python_backend examples (tests/triton_python_examples/, unchanged) laid out as
their READMEs say, and their clients made to call a test's daemon.

    root = lay_out(["bls"], tmp_path / "models")            # models/add_sub, bls_sync, bls_async, pytorch
    script = client(tmp_path, "bls/sync_client.py", daemon)  # a copy with the daemon's addresses
    subprocess.run([sys.executable, script], ...)

A client hard-codes Triton's ports (localhost:8000 HTTP, 8001 gRPC, 8002 metrics); its copy
names the daemon's instead, and that is its only change."""

from __future__ import annotations

import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "triton_python_examples"

# Each example's README: the models it needs, as (model name, model file, config.pbtxt or None).
_MODELS = {
    "add_sub": ("add_sub/model.py", "add_sub/config.pbtxt"),
    "pytorch": ("pytorch/model.py", "pytorch/config.pbtxt"),
    "nobatch_auto_complete": ("auto_complete/nobatch_model.py", None),
    "batch_auto_complete": ("auto_complete/batch_model.py", None),
    "bls_sync": ("bls/sync_model.py", "bls/sync_config.pbtxt"),
    "bls_async": ("bls/async_model.py", "bls/async_config.pbtxt"),
    "repeat_int32": ("decoupled/repeat_model.py", "decoupled/repeat_config.pbtxt"),
    "square_int32": ("decoupled/square_model.py", "decoupled/square_config.pbtxt"),
    "bls_decoupled_sync": ("bls_decoupled/sync_model.py", "bls_decoupled/sync_config.pbtxt"),
    "bls_decoupled_async": ("bls_decoupled/async_model.py", "bls_decoupled/async_config.pbtxt"),
    "custom_metrics": ("custom_metrics/model.py", "custom_metrics/config.pbtxt"),
}
LAYOUTS = {
    "add_sub": ["add_sub"],
    "pytorch": ["pytorch"],
    "auto_complete": ["nobatch_auto_complete", "batch_auto_complete"],
    "bls": ["add_sub", "bls_sync", "bls_async", "pytorch"],
    "decoupled": ["repeat_int32", "square_int32"],
    "bls_decoupled": ["bls_decoupled_sync", "bls_decoupled_async", "square_int32"],
    "custom_metrics": ["custom_metrics"],
}


def lay_out(examples: list[str], root: Path) -> Path:
    """models/<name>/1/model.py and models/<name>/config.pbtxt for every model the examples need."""
    for example in examples:
        for name in LAYOUTS[example]:
            model, config = _MODELS[name]
            version = root / name / "1"
            version.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(EXAMPLES / model, version / "model.py")
            if config is not None:
                shutil.copyfile(EXAMPLES / config, root / name / "config.pbtxt")
    return root


def client(directory: Path, script: str, http: str, grpc: str = "", metrics: str = "") -> Path:
    """A copy of the example's client `script` ("bls/sync_client.py") in `directory`, calling
    `http` ("127.0.0.1:PORT") instead of localhost:8000, `grpc` instead of localhost:8001 and
    `metrics` (host:port of /metrics) instead of localhost:8002."""
    text = (EXAMPLES / script).read_text()
    for triton, ours in (("localhost:8000", http), ("localhost:8001", grpc), ("localhost:8002", metrics)):
        if triton in text:
            assert ours, f"{script} calls {triton}: give its address"
            text = text.replace(triton, ours)
    copy = directory / script.replace("/", "_")
    copy.write_text(text)
    return copy
