"""MLflow models: a directory holding an `MLmodel` file, as `mlflow.<flavor>.save_model` writes
it. Imported only inside a worker process, like every backend.

A flavor inferd serves natively (onnx, sklearn, xgboost, lightgbm, catboost, tensorflow/keras)
runs on that backend, pointed at the flavor's model file inside the directory; any other flavor
(pytorch's pickled modules included) runs through MLflow's python_function
(inferd.backends.mlflow_pyfunc). The tensors are the MLmodel signature's: tensor-based, those
tensors; column-based, one [-1] tensor per column. Without a signature a native flavor shows its
backend's own tensors. A model's requirements.txt / conda.yaml are never installed: a flavor
whose package is missing fails to load with a reason naming it.
"""

from __future__ import annotations

import importlib
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

from inferd.backends import BACKENDS
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import DATATYPES, ModelMetadata, TensorSpec

log = structlog.get_logger("inferd.worker")

_TREE_LIMIT = 10_000  # entries of a model directory checked for other users' write access


def _mlmodel():
    """inferd.backends.mlmodel (it parses YAML: PyYAML comes with the mlflow extra)."""
    try:
        from inferd.backends import mlmodel
    except ImportError as e:
        raise RuntimeError(f"reading an MLmodel file needs {e.name}: pip install 'inferd[mlflow]'") from None
    return mlmodel


def check_not_writable_by_others(directory: Path) -> None:
    """Code that any local user could change must not run as the daemon's user: the directory,
    its parent and everything in it (bounded), as for Python models (inferd.backends.python)."""
    entries = [directory.parent, directory]
    for i, entry in enumerate(directory.rglob("*")):
        if i >= _TREE_LIMIT:
            raise RuntimeError(f"{directory} holds over {_TREE_LIMIT} files: not a model directory inferd checks")
        entries.append(entry)
    for p in entries:
        mode = p.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & stat.S_IWOTH:
            raise RuntimeError(f"{p} is writable by other users; refusing to run code from it (chmod o-w)")


def missing_package(flavor: str, e: ImportError) -> RuntimeError:
    """The load's reason when a flavor's package is not installed."""
    mlmodel = _mlmodel()
    package = (e.name or mlmodel.package_of(flavor)).split(".")[0]
    extra = mlmodel.NATIVE.get(flavor, (None, None))[1]
    how = f"pip install 'inferd[{extra}]'" if extra and extra != "cpu" else f"install {package} into inferd's environment"
    return RuntimeError(f"the MLmodel's {flavor!r} flavor needs the Python package {package!r}, which is not installed "
                        f"({how}; inferd never installs a model's requirements.txt or conda.yaml)")


def _cast(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.datatype == "BYTES" or array.dtype == object:
        return array
    return array.astype(DATATYPES[spec.datatype], copy=False)


def signature_onto(signature, theirs: tuple[TensorSpec, ...]) -> Callable | None:
    """How requests shaped as the signature's inputs become the native backend's: same names
    (cast to its datatypes), one input renamed, or columns stacked into its one matrix; None
    when the signature does not map onto them."""
    by_name = {t.name: t for t in theirs}
    if {t.name for t in signature.inputs} == set(by_name):
        if any(len(t.shape) != len(by_name[t.name].shape) for t in signature.inputs):
            return None
        return lambda inputs: {n: _cast(a, by_name[n]) for n, a in inputs.items()}
    if len(theirs) != 1:
        return None
    target = theirs[0]
    if len(signature.inputs) == 1:
        if len(signature.inputs[0].shape) != len(target.shape):
            return None
        return lambda inputs: {target.name: _cast(next(iter(inputs.values())), target)}
    order = [t.name for t in signature.inputs]
    numeric = all(t.datatype != "BYTES" for t in signature.inputs) and target.datatype != "BYTES"
    if signature.columns and numeric and len(target.shape) == 2 and target.shape[1] in (-1, len(order)):
        dtype = DATATYPES[target.datatype]
        return lambda inputs: {target.name: np.stack([inputs[n] for n in order], axis=1).astype(dtype, copy=False)}
    return None


class MLflowBackend:
    platform = "mlflow"

    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path  # the directory holding MLmodel
        self.settings = settings
        self.runner = None  # the native backend, or the python_function model
        self.adapt: Callable[[dict], dict] = lambda inputs: inputs
        self.device_name = "cpu"

    def load(self) -> ModelMetadata:
        mlmodel = _mlmodel()
        document = mlmodel.read(self.path)
        flavor = mlmodel.native_flavor(document)
        if flavor != "onnx":  # (an ONNX graph runs no Python code; every other flavor may)
            check_not_writable_by_others(self.path)
        path = mlmodel.flavor_file(self.path, flavor, document["flavors"][flavor]) if flavor else None
        target = BACKENDS.get(mlmodel.native_backend(flavor, path)) if flavor else None
        if target is None:  # (a native flavor whose backend this inferd lacks: python_function too)
            from inferd.backends.mlflow_pyfunc import PyfuncModel

            self.runner = PyfuncModel(self.path, self.settings, document)
            inputs, outputs = self.runner.load()
            return ModelMetadata(self.platform, inputs, outputs)
        return self._load_native(mlmodel, document, flavor, target, path)

    def _load_native(self, mlmodel, document: dict, flavor: str, target: str, path: Path) -> ModelMetadata:
        module, _, name = target.partition(":")
        try:
            self.runner = getattr(importlib.import_module(module), name)(path, self.settings)
            metadata = self.runner.load()
        except ImportError as e:
            raise missing_package(flavor, e) from e
        self.device_name = getattr(self.runner, "device_name", "cpu")
        inputs, signature = metadata.inputs, mlmodel.signature(document)
        adapt = signature_onto(signature, metadata.inputs) if signature else None
        if adapt is not None:
            inputs, self.adapt = signature.inputs, adapt
        elif signature is not None:
            log.info("the MLmodel signature's inputs do not map onto the model's: serving the model's own",
                     signature=[t.name for t in signature.inputs], model=[t.name for t in metadata.inputs])
        return ModelMetadata(self.platform, inputs, metadata.outputs, metadata.decoupled, metadata.max_batch_size)

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return self.runner.execute(self.adapt(inputs), outputs)

    def unload(self) -> None:
        if self.runner is not None:
            self.runner.unload()
        self.runner = None
