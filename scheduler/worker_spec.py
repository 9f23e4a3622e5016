"""What a worker is started with: the model version it hosts and its BackendSettings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from inferd.backends.settings import BackendSettings
from inferd.config.model import ModelSettings


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to host one model version."""

    model: str
    version: str
    path: Path
    backend: str  # "module:Class"
    settings: BackendSettings  # what the backend is told
    shared_memory: bool  # batch tensors travel through shared memory (else in the messages)
    busy_poll_us: int  # at light load, this loop and the worker poll this long around a batch
    execution_timeout_s: float  # a batch still running then fails, and its worker is killed

    @classmethod
    def of(cls, model: str, version: str, path: Path, backend: str, settings: ModelSettings, *,
           model_dir: Path | None = None, gpu: int | None = None, **declared) -> WorkerSpec:
        """The spec of a model's workers from its settings; `gpu`: where "auto" placed it;
        `declared`: BackendSettings' fields from the model's config (inputs, outputs, ...)."""
        backend_settings = BackendSettings(
            model_dir=str(model_dir or path.parent), max_batch_size=settings.max_batch_size, device=settings.device,
            gpu=gpu, intra_op_threads=settings.intra_op_threads, intra_op_spinning=settings.intra_op_spinning,
            **_UNDECLARED | declared,
        )
        return cls(model, version, path, backend, backend_settings, settings.shared_memory, settings.busy_poll_us,
                   settings.execution_timeout_s)


# BackendSettings' fields that come from a model's config, when it says nothing.
_UNDECLARED = {"inputs": (), "outputs": (), "parameters": {}, "decoupled": None, "model_config": None,
               "daemon_socket": "", "metrics_dir": "", "reshape": {},
               "optional_inputs": ()}
