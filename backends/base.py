"""The interface every backend implements. One instance lives in one worker process and is
called by one thread: never two concurrent `execute` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata


class Backend(Protocol):
    def __init__(self, path: Path, settings: BackendSettings) -> None: ...

    def load(self) -> ModelMetadata:
        """Load the model file once; report its inputs and outputs. Raise to fail the load."""

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run one batch (requests stacked along the first dimension); return the named outputs."""

    def unload(self) -> None:
        """Release the model. Called once, before the worker exits."""


class BackendInputError(Exception):
    """The batch's content is unacceptable to the runtime (the caller's fault, not the model's)."""


class BackendOutputError(Exception):
    """The model ran but did not produce the outputs it declares (a model that cannot on its
    warm-up run fails to load)."""
