"""An MLflow model directory's `MLmodel` file, read without MLflow: its flavors, which of them
inferd runs on its own backends, and its signature as V2 tensors. Imported only inside a worker
(inferd.backends.mlflow), like every backend."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from inferd.common.tensors import TensorSpec

MLMODEL = "MLmodel"
_MAX_BYTES = 1 << 20  # an MLmodel is a few KiB; a larger one is not one

# Flavors inferd serves natively, most direct first: flavor -> (BACKENDS key, pip extra).
NATIVE = {"onnx": ("onnx", "cpu"), "sklearn": ("sklearn", "sklearn"), "xgboost": ("xgboost", "xgboost"),
          "lightgbm": ("lightgbm", "lightgbm"), "catboost": ("catboost", "catboost"),
          "tensorflow": ("tensorflow", "tensorflow"), "keras": ("tensorflow", "tensorflow")}

# The package each flavor's own MLflow module needs (a missing one is named in the load's reason).
FLAVOR_PACKAGES = {"sklearn": "scikit-learn", "xgboost": "xgboost", "lightgbm": "lightgbm", "catboost": "catboost",
                   "tensorflow": "tensorflow", "keras": "keras", "pytorch": "torch", "onnx": "onnxruntime",
                   "transformers": "transformers", "statsmodels": "statsmodels", "prophet": "prophet"}

# MLflow's column types -> V2 datatypes (datetime has none: refused).
COLUMN_TYPES = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
                "string": "BYTES", "binary": "BYTES"}
# numpy dtype names in a tensor-spec -> V2 datatypes.
TENSOR_TYPES = {"bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
                "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "float16": "FP16",
                "float32": "FP32", "float64": "FP64", "object": "BYTES", "str": "BYTES", "bytes": "BYTES"}


class MLmodelError(RuntimeError):
    """The MLmodel file cannot be read, or says something inferd cannot serve."""


@dataclasses.dataclass(frozen=True)
class Signature:
    """The signature's tensors. `columns`: the inputs are a DataFrame's columns (the model is
    called with a pandas DataFrame); otherwise tensors (numpy arrays). `unnamed`: the one input
    has no name in the signature (the model is called with the bare array)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    columns: bool
    unnamed: bool
    texts: frozenset[str] = frozenset()  # inputs the model takes as str (BYTES decoded as UTF-8)


def read(directory: Path) -> dict:
    """The MLmodel file of `directory`, parsed (YAML, safe: no objects built from tags)."""
    path = directory / MLMODEL
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except OSError as e:
        raise MLmodelError(f"cannot read {MLMODEL}: {e.strerror or e}") from None
    if len(data) > _MAX_BYTES:
        raise MLmodelError(f"{MLMODEL} is over {_MAX_BYTES} bytes: not an MLflow model file")
    try:
        parsed = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise MLmodelError(f"{MLMODEL} is not valid YAML: {e}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("flavors"), dict) or not parsed["flavors"]:
        raise MLmodelError(f"{MLMODEL} names no flavors (an MLflow model's MLmodel has a `flavors` table)")
    return parsed


_PICKLES = (".pkl", ".pickle", ".joblib")


def native_backend(flavor: str, path: Path) -> str:
    """The BACKENDS key that runs a native flavor's file: a pickled scikit-learn-API estimator
    (mlflow.lightgbm saves an LGBMClassifier so) is scikit-learn's whatever the flavor; a Keras
    model with custom objects (pickled beside it) needs them, which only python_function loads."""
    if flavor in ("tensorflow", "keras") and (path.parent / "custom_objects.cloudpickle").exists():
        return "python_function"
    return "sklearn" if path.suffix in _PICKLES else NATIVE[flavor][0]


def native_flavor(mlmodel: dict) -> str | None:
    """The first flavor inferd serves on its own backend, or None (python_function)."""
    return next((f for f in NATIVE if isinstance(mlmodel["flavors"].get(f), dict)), None)


def flavor_file(directory: Path, flavor: str, conf: dict) -> Path:
    """The model file (or SavedModel directory) a native flavor keeps inside the directory."""
    if flavor == "onnx":
        name = conf.get("data")
    elif flavor == "sklearn":
        name = conf.get("pickled_model")
    elif flavor == "tensorflow" and conf.get("saved_model_dir"):
        name = conf["saved_model_dir"]
    elif flavor in ("tensorflow", "keras"):
        name = _keras_file(directory, conf.get("data", "data"))
    else:
        name = conf.get("data")
    if not isinstance(name, str) or not name:
        raise MLmodelError(f"{MLMODEL}'s {flavor} flavor names no model file")
    path = (directory / name).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise MLmodelError(f"{MLMODEL}'s {flavor} flavor names a file outside the model's directory: {name}")
    if not path.exists():
        raise MLmodelError(f"{MLMODEL}'s {flavor} flavor names {name}, which the directory does not hold")
    return path


def _keras_file(directory: Path, data: str) -> str:
    """A Keras model saved by MLflow: the .keras file under the flavor's data folder."""
    found = sorted((directory / data).rglob("*.keras")) if (directory / data).is_dir() else []
    return str(found[0].relative_to(directory)) if found else data


def loader_module(mlmodel: dict) -> str:
    """The module python_function loads the model with ("" when the MLmodel names none)."""
    conf = mlmodel["flavors"].get("python_function")
    return conf.get("loader_module", "") if isinstance(conf, dict) else ""


def package_of(flavor: str) -> str:
    return FLAVOR_PACKAGES.get(flavor, flavor)


def signature(mlmodel: dict) -> Signature | None:
    """The MLmodel's signature as tensors, or None when it has none (or no inputs)."""
    sig = mlmodel.get("signature")
    if not isinstance(sig, dict) or not sig.get("inputs"):
        return None
    inputs = _schema(sig["inputs"], "inputs")
    outputs = _schema(sig["outputs"], "outputs") if sig.get("outputs") else []
    columns = all(c.get("type") != "tensor" for c in inputs)
    specs = tuple(_spec(c, i, "input", len(inputs)) for i, c in enumerate(inputs))
    texts = frozenset(s.name for s, c in zip(specs, inputs)
                      if c.get("type") == "string" or (c.get("tensor-spec") or {}).get("dtype") == "str")
    return Signature(specs, tuple(_spec(c, i, "output", len(outputs)) for i, c in enumerate(outputs)),
                     columns, unnamed=len(inputs) == 1 and not inputs[0].get("name"), texts=texts)


def _schema(text, kind: str) -> list[dict]:
    try:
        schema = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise MLmodelError(f"{MLMODEL}'s signature {kind} are not JSON") from None
    if not isinstance(schema, list) or not all(isinstance(c, dict) for c in schema):
        raise MLmodelError(f"{MLMODEL}'s signature {kind} are not a list of columns or tensors")
    if len({c.get("type") == "tensor" for c in schema}) > 1:
        raise MLmodelError(f"{MLMODEL}'s signature {kind} mix columns and tensors")
    return schema


def _spec(column: dict, index: int, kind: str, count: int) -> TensorSpec:
    """One signature entry as a tensor; an unnamed one is `kind` (or `kind`_<i> among several)."""
    name = str(column.get("name") or (kind if count == 1 else f"{kind}_{index}"))
    if column.get("type") == "tensor":
        spec = column.get("tensor-spec") or {}
        datatype = TENSOR_TYPES.get(str(spec.get("dtype")))
        shape = tuple(int(d) for d in spec.get("shape") or (-1,))
    else:
        datatype, shape = COLUMN_TYPES.get(str(column.get("type"))), (-1,)
    if datatype is None:
        kind_of = column.get("tensor-spec", {}).get("dtype") if column.get("type") == "tensor" else column.get("type")
        raise MLmodelError(f"the signature's {kind} {name!r} has type {kind_of!r}, which the V2 protocol cannot carry")
    return TensorSpec(name, datatype, shape)
