"""Custom Python models: a `model.py` (or `<name>.py`) defining a class `Model`. Imported only
inside the model's own worker process, like every backend. docs/python-models.md is the guide.
A model.py defining Triton's `TritonPythonModel` instead is served by inferd.backends.triton.model.

    class Model:
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]     # or config.toml
        outputs = [{"name": "tokens", "datatype": "INT64", "shape": [-1, 16]}]

        def load(self, model_dir: pathlib.Path, config: dict) -> None: ...   # optional, once
        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
        def unload(self) -> None: ...                                          # optional

`infer` gets one batch (requests stacked along the first dimension when the model batches;
BYTES tensors as numpy object arrays of `bytes`) and returns every declared output, with as
many rows as it was given. Raising `InvalidInput` refuses the batch as the caller's fault (HTTP
400); any other exception is the model's (HTTP 500): its type and message reach the caller
(server paths cut to their last component), its traceback goes to the log. The worker goes on
serving either way. A model whose warm-up run (zeros, one row) returns but not the outputs it
declares fails to load. What it prints becomes log events (inferd.backends.output).
"""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path

import numpy as np

from inferd.backends import decoupled
from inferd.backends.base import BackendInputError, BackendOutputError
from inferd.backends.settings import BackendSettings
from inferd.backends.triton import bls
from inferd.common.tensors import DATATYPES, ModelMetadata, TensorSpec, as_bytes, object_tensor

InvalidInput = BackendInputError  # for model code: `from inferd.backends.python import InvalidInput`


class ModelCodeError(Exception):
    """An exception raised in the model's own code, with its type and message."""


class ModelOutputError(ModelCodeError, BackendOutputError):
    """infer() returned, but not the outputs the model declares (on the warm-up run: the model
    fails to load)."""


def _check_not_writable_by_others(path: Path) -> None:
    """Code that any local user could change must not run as the daemon's user."""
    for p in (path, path.parent):
        if p.stat().st_mode & stat.S_IWOTH:
            raise RuntimeError(f"{p} is writable by other users; refusing to run code from it (chmod o-w)")


def _specs(declared, kind: str) -> tuple[TensorSpec, ...]:
    try:
        specs = tuple(TensorSpec.from_dict(t) for t in declared)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise RuntimeError(f"Model.{kind} must be a list of {{name, datatype, shape}} tables") from None
    for spec in specs:
        if spec.datatype not in DATATYPES:
            raise RuntimeError(f"Model.{kind}: {spec.name!r} has unknown datatype {spec.datatype!r}")
    return specs


def _declared(theirs: tuple[TensorSpec, ...], in_class, kind: str) -> tuple[TensorSpec, ...]:
    """The class's tensors, or config.toml's where it declares them: those may only narrow the
    class's (fix a dynamic dimension), never contradict them."""
    mine = _specs(in_class, kind)
    if not theirs:
        return mine
    if mine:
        by_name = {t.name: t for t in mine}
        if set(by_name) != {t.name for t in theirs}:
            raise RuntimeError(f"config.toml's {kind} ({', '.join(t.name for t in theirs)}) are not the model's "
                               f"({', '.join(by_name)})")
        for t in theirs:
            if not by_name[t.name].narrowed_by(t):
                have = by_name[t.name]
                raise RuntimeError(f"config.toml {kind} {t.name!r} ({t.datatype} {list(t.shape)}) contradicts "
                                   f"Model.{kind} ({have.datatype} {list(have.shape)})")
    return theirs


def _decoupled(cls, said: bool | None) -> bool:
    """The class's `decoupled` attribute, or config.toml's `decoupled` (which may say it, not
    contradict it)."""
    attribute = getattr(cls, "decoupled", False) is True
    if said is False and attribute:
        raise RuntimeError("config.toml says decoupled = false, but the model's class sets decoupled = True")
    return attribute or bool(said)


class PythonBackend:
    platform = "python"

    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path
        self.settings = settings
        self.model = None
        self.outputs: dict[str, TensorSpec] = {}
        self.batching = False  # requests stacked along the first dimension: outputs keep the rows
        self.decoupled = False  # infer is a generator: 0..N responses per request (backends/decoupled.py)
        self.per_request = False  # each caller answered on its own (a Triton model: backends/base.py)
        self.triton = None  # the runner of a Triton Python model (inferd.backends.triton.model)

    def load(self) -> ModelMetadata:
        _check_not_writable_by_others(self.path)
        bls.configure(self.settings.daemon_socket)  # (calls to other models: the model may make them from here on)
        if self.path.name == "model.py":  # models/<name>/<version>/: modules beside it import as usual
            sys.path.insert(0, str(self.path.parent))  # (not the models directory of a bare <name>.py)
        from inferd.backends.triton import model as triton  # `import triton_python_backend_utils` works

        triton.install()
        spec = importlib.util.spec_from_file_location("inferd_user_model", self.path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # what dataclasses and pickle look up
        spec.loader.exec_module(module)
        if isinstance(getattr(module, "TritonPythonModel", None), type) and not hasattr(module, "Model"):
            return self._load_triton(triton.TritonRunner(self.path, self.settings, module.TritonPythonModel))
        cls = getattr(module, "Model", None)
        if not isinstance(cls, type) or not callable(getattr(cls, "infer", None)):
            raise RuntimeError(f"{self.path.name} must define a class Model with an infer(self, inputs) method")
        self.model = cls()
        if hasattr(self.model, "load"):
            self.model.load(Path(self.settings.model_dir), self.settings.for_model_code())
        inputs = _declared(self.settings.inputs, getattr(self.model, "inputs", ()), "inputs")
        outputs = _declared(self.settings.outputs, getattr(self.model, "outputs", ()), "outputs")
        if not inputs or not outputs:
            raise RuntimeError(
                "declare the model's tensors: Model.inputs and Model.outputs, or [[inputs]] and [[outputs]] "
                "(name, datatype, shape; -1 for a dynamic dimension) in its config.toml"
            )
        self.outputs = {t.name: t for t in outputs}
        self.decoupled = _decoupled(cls, self.settings.decoupled)
        metadata = ModelMetadata(self.platform, inputs, outputs, self.decoupled)
        self.batching = self.settings.max_batch_size > 0 and metadata.batchable and not self.decoupled
        return metadata

    def _load_triton(self, runner) -> ModelMetadata:
        """A Triton Python model: the runner serves it, each caller on its own."""
        metadata = runner.load()
        self.triton, self.per_request, self.decoupled = runner, True, runner.decoupled
        return metadata

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str], requests=None):
        if self.triton is not None:
            return self.triton.execute(inputs, outputs, requests)
        if self.decoupled:  # warm-up and profiling only: requests go through responses()
            return decoupled.first_responses(self, inputs, outputs)
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        try:
            result = self.model.infer(inputs)
        except BackendInputError:
            raise
        except Exception as e:
            raise ModelCodeError(f"{self.path.name} raised {type(e).__name__}: {e}") from e
        if not isinstance(result, dict):
            raise ModelOutputError(f"{self.path.name}: infer() must return a dict of outputs, got {type(result).__name__}")
        return {name: self._output(name, result, rows) for name in outputs}

    def responses(self, inputs: dict[str, np.ndarray], outputs: list[str], parameters: dict | None = None):
        """A decoupled model's responses to one request, each checked as execute's result
        (`parameters`: the request's, for a per-request model)."""
        if self.triton is not None:
            yield from self.triton.responses(inputs, outputs, parameters)
            return
        results = None
        try:
            results = self.model.infer(inputs)
            if not hasattr(results, "__next__") or not hasattr(results, "close"):
                raise ModelOutputError(f"{self.path.name}: a decoupled model's infer() must be a generator "
                                       f"(yield each response), got {type(results).__name__}")
            for result in results:
                if not isinstance(result, dict):
                    raise ModelOutputError(f"{self.path.name}: infer() must yield dicts of outputs, "
                                           f"got {type(result).__name__}")
                yield {name: self._output(name, result, 0) for name in outputs}
        except (BackendInputError, ModelCodeError):
            raise
        except Exception as e:
            raise ModelCodeError(f"{self.path.name} raised {type(e).__name__}: {e}") from e
        finally:  # the request was cancelled, or failed: the model's generator stops now (GeneratorExit)
            if results is not None and hasattr(results, "close"):
                results.close()

    def _output(self, name: str, result: dict, rows: int) -> np.ndarray:
        spec = self.outputs[name]
        if name not in result:
            raise ModelOutputError(f"{self.path.name}: infer() did not return output {name!r}")
        try:
            array = _as_bytes(result[name]) if spec.datatype == "BYTES" else np.asarray(result[name], DATATYPES[spec.datatype])
        except (TypeError, ValueError) as e:
            raise ModelOutputError(f"{self.path.name}: output {name!r} is not {spec.datatype}: {e}") from None
        if not spec.accepts_shape(array.shape):
            raise ModelOutputError(f"{self.path.name}: output {name!r} has shape {list(array.shape)}, declared {list(spec.shape)}")
        if self.batching and array.shape[0] != rows:
            raise ModelOutputError(f"{self.path.name}: output {name!r} has {array.shape[0]} rows for a batch of {rows}")
        return array

    def unload(self) -> None:
        if self.triton is not None:
            self.triton.unload()
        if self.model is not None and hasattr(self.model, "unload"):
            self.model.unload()
        self.model = None


def _as_bytes(value) -> np.ndarray:
    """BYTES elements are bytes; str elements are encoded as UTF-8."""
    array = np.asarray(value, dtype=object)
    return object_tensor([as_bytes(x) for x in array.reshape(-1).tolist()], array.shape)
