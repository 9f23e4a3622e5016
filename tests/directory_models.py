"""`inferd` with a stand-in for the directory backends (TensorFlow's SavedModel, MLflow), so the
tests of directory models (found, complete, replaced: daemon/models/model_dirs.py) run whether
or not those frameworks and their backends are installed. Test scaffolding, never shipped.

    python tests/directory_models.py serve [inferd serve flags]

The stand-in ("directory_models:SumOfFiles", imported by real workers from this folder, which is
on the daemon's sys.path) answers y = x + the sum of the numbers written in the model
directory's files (a file that holds no number counts 0): an answer shows which files it read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from inferd.common.tensors import ModelMetadata, TensorSpec


class SumOfFiles:
    def __init__(self, path, settings) -> None:
        self.path = Path(path)
        self.total = 0.0

    def load(self) -> ModelMetadata:
        for f in sorted(self.path.rglob("*")):
            text = f.read_text(errors="replace").strip() if f.is_file() else ""
            self.total += int(text) if text.isdigit() else 0
        return ModelMetadata("stand_in", (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("y", "FP32", (-1, 2)),))

    def execute(self, inputs, outputs):
        return {"y": inputs["x"] + self.total}

    def unload(self) -> None:
        pass


if __name__ == "__main__":
    from inferd.backends import BACKENDS
    from inferd.daemon.cli import main

    BACKENDS["tensorflow"] = BACKENDS["mlflow"] = "directory_models:SumOfFiles"
    sys.exit(main())
