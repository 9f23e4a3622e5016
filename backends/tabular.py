"""Tensor conventions shared by the backends of tabular models (scikit-learn, XGBoost, LightGBM,
CatBoost, MLflow): what their inputs and outputs are called and typed, and how a batch becomes
the feature matrix (or DataFrame) the framework predicts on. Imported only inside a worker.

  - a feature matrix model takes "input" [-1, n_features] (FP32 unless config.toml says FP64);
  - a model fitted on a DataFrame takes one [-1] input per column, named after it;
  - a classifier answers "label" [-1] (INT64, or BYTES for string classes) and, when it can,
    "probabilities" [-1, n_classes] FP32; a regressor answers "prediction" FP32 [-1]
    ([-1, n_targets] for several targets).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from inferd.backends.base import BackendInputError
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import TensorSpec, as_bytes, object_tensor, texts

MATRIX = "input"
LABEL = "label"
PROBABILITIES = "probabilities"
PREDICTION = "prediction"
_NUMPY_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
                "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
                "UINT64": np.uint64, "BOOL": np.bool_}


def matrix_input(n_features: int | None, datatype: str = "FP32") -> TensorSpec:
    """The feature matrix "input" [-1, n_features] (-1 there too when the model does not say)."""
    return TensorSpec(MATRIX, datatype, (-1, n_features if n_features else -1))


def column_inputs(columns: list[str], datatypes: dict[str, str]) -> tuple[TensorSpec, ...]:
    """One [-1] input per DataFrame column, in the model's column order; FP64 where `datatypes`
    (the backend's guess, or config.toml's) does not name the column's type."""
    return tuple(TensorSpec(str(c), datatypes.get(str(c), "FP64"), (-1,)) for c in columns)


def classifier_outputs(n_classes: int, string_labels: bool) -> tuple[TensorSpec, TensorSpec]:
    return (TensorSpec(LABEL, "BYTES" if string_labels else "INT64", (-1,)),
            TensorSpec(PROBABILITIES, "FP32", (-1, n_classes)))


def regressor_outputs(n_targets: int = 1) -> tuple[TensorSpec]:
    return (TensorSpec(PREDICTION, "FP32", (-1,) if n_targets == 1 else (-1, n_targets)),)


def declared_inputs(settings: BackendSettings, default: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    """`default` with the datatypes config.toml's [[inputs]] declares for them (FP64 features, a
    column's BYTES). Shapes stay the model's: the daemon checks that config.toml only narrows
    them, and reports a declared name the model does not have."""
    declared = {t.name: t for t in settings.inputs}
    return tuple(dataclasses.replace(t, datatype=declared[t.name].datatype) if t.name in declared else t
                 for t in default)


def features(inputs: dict[str, np.ndarray], specs: tuple[TensorSpec, ...], columns: list[str] | None):
    """What the framework predicts on: the feature matrix (its declared dtype; BYTES as str
    objects), or, for a model fitted on a DataFrame (`columns`), a pandas DataFrame of the column
    inputs in the model's order."""
    by_name = {t.name: t for t in specs}
    if columns is None:
        return _values(MATRIX, inputs[MATRIX], by_name[MATRIX].datatype)
    import pandas as pd

    return pd.DataFrame({c: _values(c, inputs[c].reshape(-1), by_name[c].datatype) for c in columns})


def _values(name: str, array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype != "BYTES":
        return array if array.dtype == _NUMPY_TYPES[datatype] else array.astype(_NUMPY_TYPES[datatype])
    try:
        return object_tensor(texts(array), array.shape)
    except UnicodeDecodeError:
        raise BackendInputError(f"input {name!r} holds text: its BYTES elements must be UTF-8") from None


def string_classes(classes) -> bool:
    """Whether a classifier's classes_ answer as BYTES labels rather than INT64 (anything but
    integers, or floats that are whole numbers)."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "iub":
        return False
    if classes.dtype.kind == "f":
        return not bool(np.all(np.isfinite(classes)) and np.all(classes == np.round(classes)))
    return True


def labels_out(pred) -> np.ndarray:
    """A classifier's predicted labels as the "label" tensor: INT64 for integer classes (floats
    that are whole numbers included), else an object array of bytes (str classes UTF-8)."""
    pred = np.asarray(pred)
    numeric = pred.dtype.kind in "iubf" if pred.size == 0 else not string_classes(pred)
    if numeric:
        return pred.astype(np.int64)
    return object_tensor([as_bytes(x) if isinstance(x, (bytes, str)) else str(x).encode()
                          for x in pred.reshape(-1).tolist()], pred.shape)


def probabilities_out(proba) -> np.ndarray:
    return np.asarray(proba, dtype=np.float32)


def prediction_out(pred) -> np.ndarray:
    """A regressor's answer as the "prediction" tensor (FP32)."""
    return np.asarray(pred, dtype=np.float32)
