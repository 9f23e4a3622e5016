"""An MLflow model run through MLflow's python_function (mlflow.pyfunc.load_model): the flavors
inferd has no backend of its own for. Imported only inside a worker (inferd.backends.mlflow).

The model is called as MLflow calls it: a pandas DataFrame for a column-based signature, the bare
array for one unnamed tensor, a dict of arrays for named tensors. Its answer (array, Series,
DataFrame, dict or list) becomes the declared outputs: a DataFrame's or dict's by name, or the
whole answer as the one output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferd.backends import mlmodel
from inferd.backends.base import BackendInputError, BackendOutputError
from inferd.backends.mlflow import missing_package
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import DATATYPES, TensorSpec, as_bytes, object_tensor, texts


def _flavor(document: dict) -> str:
    """The flavor python_function serves: the MLmodel's other flavor, else its loader module."""
    others = [f for f in document["flavors"] if f != "python_function"]
    return others[0] if others else mlmodel.loader_module(document) or "python_function"


class PyfuncModel:
    def __init__(self, path: Path, settings: BackendSettings, document: dict) -> None:
        self.path = path
        self.settings = settings
        self.document = document
        self.model = None
        self.inputs: tuple[TensorSpec, ...] = ()
        self.outputs: dict[str, TensorSpec] = {}
        self.columns = False  # the model takes a DataFrame of the inputs
        self.unnamed = False  # the model takes its one input's bare array
        self.texts: frozenset[str] = frozenset()  # inputs the model takes as str

    def load(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        flavor = _flavor(self.document)
        outputs = self._tensors(flavor)
        try:
            from mlflow import pyfunc
        except ImportError as e:
            raise RuntimeError(f"this MLflow model's {flavor!r} flavor runs through MLflow's python_function, and "
                               f"MLflow is not installed ({e.name}): pip install 'inferd[mlflow]'") from None
        try:
            self.model = pyfunc.load_model(str(self.path))
        except ImportError as e:
            raise missing_package(flavor, e) from e
        self.outputs = {t.name: t for t in outputs}
        return self.inputs, outputs

    def _tensors(self, flavor: str) -> tuple[TensorSpec, ...]:
        """The signature's tensors, or config.toml's where the MLmodel has none; the outputs."""
        signature = mlmodel.signature(self.document)
        if signature is not None:
            self.inputs, self.columns, self.unnamed = signature.inputs, signature.columns, signature.unnamed
            self.texts = signature.texts
        else:
            self.inputs = self.settings.inputs
            self.unnamed = len(self.inputs) == 1
            self.columns = len(self.inputs) > 1 and all(len(t.shape) == 1 for t in self.inputs)
        outputs = signature.outputs if signature is not None and signature.outputs else self.settings.outputs
        if not self.inputs or not outputs:
            missing = "inputs" if not self.inputs else "outputs"
            raise RuntimeError(f"this MLflow model ({flavor!r} flavor, run through python_function) has no signature "
                               f"{missing}: save it with a signature (mlflow.models.infer_signature) or declare "
                               "its [[inputs]] and [[outputs]] in config.toml")
        return outputs

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        from mlflow.exceptions import MlflowException

        try:
            result = self.model.predict(self._model_input(inputs))
        except MlflowException as e:
            if e.error_code == "INVALID_PARAMETER_VALUE":  # (MLflow's schema enforcement refused the input)
                raise BackendInputError(e.message) from None
            raise
        return self._results(result, outputs)

    def _value(self, name: str, array: np.ndarray):
        if name not in self.texts:
            return array
        try:
            return object_tensor(texts(array), array.shape)
        except UnicodeDecodeError:
            raise BackendInputError(f"input {name!r} is text: its BYTES elements must be UTF-8") from None

    def _model_input(self, inputs: dict[str, np.ndarray]):
        if self.columns:
            import pandas as pd

            values = {t.name: self._value(t.name, inputs[t.name]) for t in self.inputs}
            return pd.DataFrame({n: a if a.ndim == 1 else list(a) for n, a in values.items()})
        if self.unnamed:
            name = self.inputs[0].name
            return self._value(name, inputs[name])
        return {n: self._value(n, a) for n, a in inputs.items()}

    def _results(self, result, outputs: list[str]) -> dict[str, np.ndarray]:
        if hasattr(result, "columns"):  # a DataFrame
            named, whole = {c: result[c].to_numpy() for c in result.columns}, result.to_numpy()
        elif isinstance(result, dict):
            named, whole = result, None
        else:
            named, whole = {}, result
        answer = {}
        for name in outputs:
            value = named.get(name)
            if value is None and (whole is None or len(self.outputs) != 1):
                got = list(named) if named else type(result).__name__
                raise BackendOutputError(f"the model's predict returned no {name!r} (it returned {got})")
            answer[name] = _as_tensor(whole if value is None else value, self.outputs[name])
        return answer

    def unload(self) -> None:
        self.model = None


def _as_tensor(value, spec: TensorSpec) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == len(spec.shape) + 1 and array.shape[-1] == 1:  # a one-column frame for a [-1] output
        array = array.reshape(array.shape[:-1])
    if spec.datatype == "BYTES":
        try:
            return object_tensor([as_bytes(x) for x in array.reshape(-1).tolist()], array.shape)
        except TypeError as e:
            raise BackendOutputError(f"output {spec.name!r} is BYTES: {e}") from None
    try:
        return array.astype(DATATYPES[spec.datatype], copy=False)
    except (TypeError, ValueError) as e:
        raise BackendOutputError(f"output {spec.name!r} is {spec.datatype}: {e}") from None
