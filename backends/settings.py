"""What a backend is told besides its model file: built by the daemon from the model's config,
sent to the worker in the LOAD message, rebuilt there. Every field is set by the daemon (none
has a default here), so the worker never guesses a setting."""

from __future__ import annotations

import dataclasses

from inferd.common.tensors import TensorSpec


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    model_dir: str  # the model's directory, for files of its own
    max_batch_size: int  # 0: requests are never stacked along the first dimension
    device: str  # auto | cpu | cuda:N
    gpu: int | None  # with device "auto": the GPU the daemon placed the model on (None: none)
    intra_op_threads: int  # 0: the runtime's default
    intra_op_spinning: bool  # onnxruntime's idle threads spin for work
    inputs: tuple[TensorSpec, ...]  # config.toml's tensors, for files that do not carry them
    outputs: tuple[TensorSpec, ...]
    parameters: dict  # config.toml's free-form [parameters], for the model's code
    decoupled: bool | None  # config.toml's decoupled (None: unsaid; a Python model's class attribute says)
    model_config: dict | None  # a Triton model's config.pbtxt as JSON (Triton's field names); None: not a Triton model
    daemon_socket: str  # the daemon's Unix socket, for a model's calls to other models (Triton BLS); "" = none
    metrics_dir: str  # where a model's custom metrics go for the daemon's /metrics (Triton MetricFamily); "" = none
    reshape: dict  # tensor -> its whole shape as the model sees it, when not the clients' (backends/reshape.py)
    optional_inputs: tuple  # inputs a request may leave out (Triton's optional): the model gets only those sent

    def to_wire(self) -> dict:
        return dataclasses.asdict(self) | {"inputs": [t.to_dict() for t in self.inputs],
                                           "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_wire(cls, data: dict) -> BackendSettings:
        return cls(**data | {"optional_inputs": tuple(data["optional_inputs"]),
                             "inputs": tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                             "outputs": tuple(TensorSpec.from_dict(t) for t in data["outputs"])})

    def for_model_code(self) -> dict:
        """The `config` a Python model's load(model_dir, config) gets (docs/python-models.md)."""
        return self.to_wire()
