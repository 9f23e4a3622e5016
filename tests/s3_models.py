"""Models in an S3 bucket for the daemon to mirror (models.source): moto's server (s3_server.py),
a bucket per test, ONNX add_sub models whose answers say which upload serves."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import make_models
import numpy as np

from inferd.client import Client, InferdClientError

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)
PREFIX = "models/"


def add_sub_bytes(tmp: Path, offset: int) -> bytes:
    """An add_sub model whose OUTPUT0 is INPUT0 + INPUT1 + offset."""
    path = tmp / f"add_sub_{offset}_{uuid.uuid4().hex[:6]}.onnx"
    make_models.build_add_sub(path, offset=offset)
    data = path.read_bytes()
    path.unlink()
    return data


def new_bucket(s3) -> tuple[object, str]:
    client = s3.client()
    bucket = f"inferd-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def daemon_env(s3, bucket: str, secret_key: str | None = None, **extra: str) -> dict[str, str]:
    """The daemon's environment: the store's AWS credentials (the standard chain) and the source."""
    env = s3.env(secret_key)
    env.update({
        "INFERD_MODELS_SOURCE": f"s3://{bucket}/{PREFIX.rstrip('/')}",
        "INFERD_MODELS_ENDPOINT_URL": s3.endpoint_url,
        "INFERD_MODELS_POLL_INTERVAL_S": "0.5",
        "INFERD_MODELS_SETTLE_MS": "100",
        "INFERD_MODELS_SOURCE_CONNECT_TIMEOUT_S": "1",
        "INFERD_MODELS_SOURCE_READ_TIMEOUT_S": "1",
        "INFERD_DEFAULTS_MIN_WORKERS": "1",
    })
    env.update(extra)
    return env


def served_offset(client: Client, model: str, version: str = "") -> int | None:
    """The offset the served add_sub model adds (None: not served)."""
    try:
        out = client.infer(model, {"INPUT0": A, "INPUT1": B}, version=version)
    except InferdClientError:
        return None
    return int(out["OUTPUT0"][0, 0] - (A + B)[0, 0])


def local_files(root: Path) -> list[str]:
    """Every file under root, hidden ones included, as relative paths."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def metric(d, name: str) -> float:
    """A sample's value from the daemon's /metrics (0 when absent)."""
    for line in d.http_get("/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def syncs(d, result: str = "ok") -> float:
    return metric(d, f'inferd_model_source_syncs_total{{result="{result}"}}')
