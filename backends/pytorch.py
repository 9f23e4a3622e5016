"""PyTorch backend: TorchScript (.pt) and torch.export (.pt2) files. Imported only inside a
worker process, and torch only when such a model loads (`pip install 'inferd[torch]'`).

Tensors are positional in both formats. A .pt2 file carries its inputs' names (the forward
arguments), types and dynamic dimensions; its outputs are named output0, output1, ...
TorchScript carries no types, so its tensors come from config.toml ([[inputs]], [[outputs]]),
in the order forward() takes and returns them. Where config.toml declares tensors they name
them, in that order, for either format.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np

from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata, TensorSpec

try:
    import torch
except ImportError:  # reported as the load's reason, with what to install
    torch = None

_TORCH_TYPES = {
    "BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "INT16": "int16", "INT32": "int32",
    "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
}


def _v2_type(dtype) -> str:
    for name, attr in _TORCH_TYPES.items():
        if getattr(torch, attr) == dtype:
            return name
    raise RuntimeError(f"torch dtype {dtype} has no V2 datatype this backend carries")


def _device(setting: str, gpu: int | None):
    """The torch device for `setting`; with "auto", `gpu` is the GPU the daemon placed it on."""
    if setting == "cpu" or setting == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {setting} requested but this torch has no CUDA (install a CUDA build of torch)")
    return torch.device(f"cuda:{gpu or 0}" if setting == "auto" else setting)


class TorchBackend:
    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path
        self.settings = settings
        self.module = None
        self.device = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []

    def load(self) -> ModelMetadata:
        if torch is None:
            raise RuntimeError("PyTorch models need torch in the daemon's environment: pip install 'inferd[torch]'")
        # Inputs are read-only views of shared memory; the model only reads them, so torch's
        # warning about tensors over non-writable arrays says nothing here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        if self.settings.intra_op_threads:
            torch.set_num_threads(self.settings.intra_op_threads)
        self.device = _device(self.settings.device, self.settings.gpu)
        self.device_name = str(self.device)  # "cpu" or "cuda:N"
        if self.path.suffix == ".pt2":
            platform, inputs, outputs = "pytorch_export", *self._load_exported()
        else:
            platform, inputs, outputs = "pytorch_libtorch", *self._load_torchscript()
        for spec in inputs + outputs:
            if spec.datatype not in _TORCH_TYPES:
                raise RuntimeError(f"tensor {spec.name!r} is {spec.datatype}, which torch tensors cannot hold")
        self.input_names = [t.name for t in inputs]
        self.output_names = [t.name for t in outputs]
        return ModelMetadata(platform, inputs, outputs)

    def _load_torchscript(self):
        with warnings.catch_warnings():  # deprecated in torch, but the files people have
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(str(self.path), map_location=self.device).eval()
        inputs, outputs = self.settings.inputs, self.settings.outputs
        if not inputs or not outputs:
            raise RuntimeError(
                "a TorchScript file does not carry its tensors' types: declare [[inputs]] and [[outputs]] "
                "(name, datatype, shape; -1 for a dynamic dimension) in the model's config.toml"
            )
        return inputs, outputs

    def _load_exported(self):
        program = torch.export.load(str(self.path))
        signature = program.graph_signature
        placeholders = {n.name: n.meta["val"] for n in program.graph.nodes if n.op == "placeholder"}
        output_node = next(n for n in program.graph.nodes if n.op == "output")
        found_in = tuple(
            TensorSpec(name, _v2_type(placeholders[name].dtype), _dims(placeholders[name].shape))
            for name in signature.user_inputs
        )
        found_out = tuple(
            TensorSpec(f"output{i}", _v2_type(node.meta["val"].dtype), _dims(node.meta["val"].shape))
            for i, node in enumerate(output_node.args[0])
        )
        self.module = program.module().to(self.device)
        return _named(found_in, self.settings.inputs, "inputs"), _named(found_out, self.settings.outputs, "outputs")

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        args = []
        for name in self.input_names:
            # Shares the batch's memory (a view of the shared-memory region): no copy. A tensor
            # that came in the message itself (small, or shared_memory off) is read-only bytes,
            # which torch cannot wrap: that one is copied.
            array = inputs.get(name)
            if array is None:  # an optional input the batch's requests left out (forward takes None)
                args.append(None)
                continue
            args.append(torch.from_numpy(array if array.flags.writeable else array.copy()).to(self.device))
        with torch.inference_mode():
            result = self.module(*args)
        if isinstance(result, dict):
            named = {name: result[name] for name in outputs}
        else:
            results = (result,) if isinstance(result, torch.Tensor) else tuple(result)
            if len(results) != len(self.output_names):
                raise RuntimeError(f"the model returned {len(results)} tensors; {len(self.output_names)} outputs are declared")
            named = {name: t for name, t in zip(self.output_names, results) if name in outputs}
        return {name: t.detach().cpu().numpy() for name, t in named.items()}

    def unload(self) -> None:
        self.module = None


def _dims(shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in shape)


def _named(found: tuple[TensorSpec, ...], declared: tuple[TensorSpec, ...], kind: str) -> tuple[TensorSpec, ...]:
    """config.toml's tensors name the file's, position by position; they must agree on type."""
    if not declared:
        return found
    if len(declared) != len(found):
        raise RuntimeError(f"config.toml declares {len(declared)} {kind}; the file has {len(found)}")
    for have, want in zip(found, declared):
        if not have.narrowed_by(dataclasses.replace(want, name=have.name)):
            raise RuntimeError(
                f"config.toml {kind} {want.name!r} ({want.datatype} {list(want.shape)}) does not match "
                f"the file's {have.name!r} ({have.datatype} {list(have.shape)})"
            )
    return declared
