"""add_sub models that tell their versions apart: OUTPUT0 = INPUT0 + INPUT1 + offset (the hot
directory's and the rollback's tests)."""

from __future__ import annotations

import os
from pathlib import Path

import make_models
import numpy as np

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)


def place(path: Path, offset: int = 0) -> Path:
    """An add_sub model whose OUTPUT0 is INPUT0 + INPUT1 + offset, moved into place atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")  # ignored by the watcher while written
    make_models.build_add_sub(part, offset=offset)
    os.replace(part, path)
    return path


def offset_of(outputs: dict) -> int:
    return int(outputs["OUTPUT0"][0, 0] - (A + B)[0, 0])
