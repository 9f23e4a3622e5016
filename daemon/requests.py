"""What a front-end hands the data plane and gets back. The scheduler reads requests through
its own `Request` protocol (inferd.scheduler.queue), so front-ends never import it."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(slots=True, eq=False)
class InferRequest:
    """One caller's request: named arrays with the batch dimension first (when the model batches)."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None = None  # requested output names; None = all
    id: str = ""
    parameters: dict = dataclasses.field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() after which the request must not run


@dataclasses.dataclass(slots=True, eq=False)
class InferResponse:
    """One caller's outputs, in the model's output order."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
