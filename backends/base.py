"""The interface every backend implements. One instance lives in one worker process and is
called by one thread: never two concurrent `execute` calls."""

from __future__ import annotations

import dataclasses
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
        """Run one batch (requests stacked along the first dimension); return the named outputs.
        A backend whose `per_request` is true after load() (Triton Python models) is called as
        execute(inputs, outputs, requests=BatchRequests) and answers each caller on its own."""

    def unload(self) -> None:
        """Release the model. Called once, before the worker exits."""


@dataclasses.dataclass(frozen=True)
class BatchRequests:
    """The callers of a batch, for a per-request backend: each one's rows (in batch order along
    the first dimension; a model without a batch dimension: one caller, rows (1,), its inputs as
    they came) and request parameters (msgpack-able values only; a stateful model's idle slot
    is a caller of one row without parameters). Such a backend returns one entry per caller:
    its outputs (a dict), or the exception that fails that caller alone (BackendInputError:
    the caller's fault). Without `requests` (warm-up, profiling) the batch is one caller and
    the answer a dict, as for every backend. Callers' outputs may differ in shape (each travels
    on its own: inferd.backends.per_request). A decoupled per-request backend is called
    responses(inputs, outputs, parameters=<the request's parameters>) for a request, and
    without `parameters` on its warm-up and profile runs."""

    rows: tuple[int, ...]
    parameters: tuple[dict, ...]
    ids: tuple[str, ...] = ()  # each caller's request id ("" when it gave none); () when unknown


class BackendInputError(Exception):
    """The batch's content is unacceptable to the runtime (the caller's fault, not the model's)."""


class BackendOutputError(Exception):
    """The model ran but did not produce the outputs it declares (a model that cannot on its
    warm-up run fails to load)."""
