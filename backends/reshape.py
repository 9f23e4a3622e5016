"""Triton's reshape in the worker: a tensor's clients send and receive one shape, the model
sees another (config/reshape.py reads it from config.toml).

`Reshaped` wraps any backend. The daemon tells the worker each reshaped tensor's whole shape as
the model sees it (BackendSettings.reshape: the batch dimension first where the tensor has
one); the clients' shape is config.toml's (BackendSettings.inputs / outputs). The backend inside
is told the model's shapes, so a Python model whose tensors config.toml declares sees them as
the model does. Its metadata goes back to the daemon in the clients' shapes, which requests are
checked against; inputs are reshaped to the model's shape before each run and outputs back to
the clients' after it. A -1 on one side takes the size of the -1 it stands for on the other
(config/reshape.py checked that they pair up). Reshaping a contiguous array is a view: no copy.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from inferd.backends.base import BackendInputError, BackendOutputError
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata, TensorSpec


def fill(target: tuple[int, ...], source: tuple[int, ...], actual: tuple[int, ...]) -> tuple[int, ...]:
    """`target` with its -1s, in order, the sizes `actual` has where `source` has its -1s."""
    sizes = iter([size for declared, size in zip(source, actual) if declared == -1])
    return tuple(next(sizes, 1) if d == -1 else d for d in target)


def _fits(declared: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Same rank, and equal where both are fixed."""
    return len(declared) == len(shape) and all(a == b or -1 in (a, b) for a, b in zip(declared, shape))


class Reshaped:
    """A backend whose reshaped tensors are shown to the daemon in the clients' shapes."""

    def __init__(self, make, path: Path, settings: BackendSettings) -> None:
        self.model_shapes = {name: tuple(shape) for name, shape in settings.reshape.items()}
        self.client_shapes = {t.name: t.shape for t in settings.inputs + settings.outputs if t.name in self.model_shapes}
        self.backend = make(path, dataclasses.replace(
            settings, inputs=self._as_model_sees(settings.inputs), outputs=self._as_model_sees(settings.outputs)))

    def __getattr__(self, name: str):
        # The rest of the backend's surface (device_name, per_request, decoupled, platform...).
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)

    def _as_model_sees(self, specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        return tuple(dataclasses.replace(t, shape=self.model_shapes.get(t.name, t.shape)) for t in specs)

    def load(self) -> ModelMetadata:
        metadata = self.backend.load()
        return dataclasses.replace(metadata, inputs=self._as_clients_see(metadata.inputs, "input"),
                                   outputs=self._as_clients_see(metadata.outputs, "output"))

    def _as_clients_see(self, specs: tuple[TensorSpec, ...], kind: str) -> tuple[TensorSpec, ...]:
        seen = []
        for t in specs:
            model_shape = self.model_shapes.get(t.name)
            if model_shape is not None:
                if not _fits(t.shape, model_shape):
                    raise RuntimeError(f"the model's configuration reshapes {kind} {t.name!r} to {list(model_shape)} (batch dimension "
                                       f"included), but the model has {list(t.shape)}")
                t = dataclasses.replace(t, shape=self.client_shapes[t.name])
            seen.append(t)
        return tuple(seen)

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str], **kwargs):
        result = self.backend.execute(self._to_model(inputs), outputs, **kwargs)
        if isinstance(result, list):  # a per-request backend's answers, one per caller
            return [r if isinstance(r, Exception) else self._to_clients(r) for r in result]
        return self._to_clients(result)

    def responses(self, inputs: dict[str, np.ndarray], outputs: list[str], **kwargs):
        """A decoupled model's responses, each reshaped; closing this closes the model's."""
        responses = self.backend.responses(self._to_model(inputs), outputs, **kwargs)
        try:
            for result in responses:
                yield self._to_clients(result)
        finally:
            responses.close()

    def _to_model(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shaped = dict(inputs)
        for name, array in inputs.items():
            model_shape = self.model_shapes.get(name)
            if model_shape is not None:
                client_shape = self.client_shapes[name]
                if not _fits(client_shape, array.shape):  # (the daemon checked it: a bug if so)
                    raise BackendInputError(f"input {name!r} has shape {list(array.shape)}, not {list(client_shape)}")
                shaped[name] = array.reshape(fill(model_shape, client_shape, array.shape))
        return shaped

    def _to_clients(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shaped = dict(outputs)
        for name, array in outputs.items():
            model_shape = self.model_shapes.get(name)
            if model_shape is None:
                continue
            client_shape = fill(self.client_shapes[name], model_shape, array.shape)
            if not _fits(model_shape, array.shape) or array.size != math.prod(client_shape):
                raise BackendOutputError(f"output {name!r} has shape {list(array.shape)}, not the {list(model_shape)} "
                                         "the model's configuration reshapes it from")
            shaped[name] = array.reshape(client_shape)
        return shaped
