"""scikit-learn backend: an estimator or Pipeline saved with joblib or pickle (.joblib, .pkl,
.pickle) or with skops (.skops). Imported only inside a worker process, and scikit-learn only
when such a model loads (`pip install 'inferd[sklearn]'`).

Tensors follow backends/tabular.py. A model fitted on a matrix takes "input" [-1,
n_features_in_] FP32 (config.toml's [[inputs]] may declare FP64), handed to the estimator as
float64 (exact; what it was nearly always fitted on) unless it refuses that; one fitted on a pandas
DataFrame (it has feature_names_in_) takes one [-1] input per column, named after it: BYTES
where the model encodes the column's categories as text (a OneHotEncoder or OrdinalEncoder in
a ColumnTransformer), else FP64, unless config.toml's [[inputs]] declares the column's type.
A classifier answers "label" and, when it has predict_proba, "probabilities"; any other
estimator answers "prediction" FP32. Each output asked for is one call on the whole batch.
intra_op_threads, when set, limits the OpenMP and BLAS threads predict uses (threadpoolctl).

Unpickling runs code, so .joblib/.pkl/.pickle files load only where the daemon's trust rule
allows code (daemon/models/trust.py). A .skops file holds no code: it loads unless it names
types skops does not trust; those run only if config.toml's [parameters] lists them in
`skops_trusted = ["module.Type", ...]` (the operator vouches for them), else the load fails
naming them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from inferd.backends import tabular
from inferd.backends.base import BackendInputError
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata

_INSTALL = "scikit-learn is not installed in the daemon's environment (pip install 'inferd[sklearn]')"
SKOPS_TRUSTED = "skops_trusted"  # config.toml [parameters] key: types a .skops file may instantiate


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"{what} (import {module} failed: {e})") from None


def read_estimator(path: Path, parameters: dict):
    """The object saved in `path`: unpickled (joblib reads plain pickles too), or loaded by
    skops after its trusted-types check."""
    if path.suffix == ".skops":
        return _read_skops(path, parameters)
    joblib = _require("joblib", _INSTALL)
    try:
        return joblib.load(path)
    except ModuleNotFoundError as e:  # the pickle names a class from a module not installed here
        raise RuntimeError(f"{path.name} needs module {e.name!r}, which is not installed in the daemon's environment") from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise RuntimeError(f"{path.name} is not a readable joblib/pickle file ({type(e).__name__}: {e})") from None


def _read_skops(path: Path, parameters: dict):
    sio = _require("skops.io", "skops is not installed in the daemon's environment (pip install 'inferd[sklearn]')")
    trusted = parameters.get(SKOPS_TRUSTED, [])
    if not isinstance(trusted, list) or not all(isinstance(t, str) for t in trusted):
        raise RuntimeError(f"config.toml [parameters] {SKOPS_TRUSTED} must be a list of type names (\"module.Type\")")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as e:  # a zip skops cannot read: corrupt or not skops at all
        raise RuntimeError(f"{path.name} is not a readable skops file ({type(e).__name__}: {e})") from None
    if refused := sorted(set(untrusted) - set(trusted)):
        raise RuntimeError(f"{path.name} holds types skops does not trust: {', '.join(refused)}; list those you vouch "
                           f"for in config.toml [parameters] {SKOPS_TRUSTED} to load it")
    return sio.load(path, trusted=list(untrusted))


def _text_columns(model) -> set[str]:
    """Columns a fitted ColumnTransformer (the model's first step, or the model) encodes as
    text categories: their inputs are BYTES."""
    first = model.steps[0][1] if hasattr(model, "steps") and model.steps else model
    text: set[str] = set()
    for _, transformer, columns in getattr(first, "transformers_", ()):
        encoder = transformer.steps[-1][1] if hasattr(transformer, "steps") else transformer
        categories = getattr(encoder, "categories_", None)
        if categories is None or not isinstance(columns, (list, tuple, np.ndarray)):
            continue
        for column, cats in zip(columns, categories):
            if isinstance(column, str) and np.asarray(cats).dtype.kind in "OUS":
                text.add(column)
    return text


class SklearnBackend:
    platform = "sklearn"

    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path
        self.settings = settings
        self.model = None
        self.columns: list[str] | None = None  # a DataFrame-fitted model's columns, in its order
        self.inputs = ()
        # The floats a feature matrix is handed over as: float64, what estimators are nearly
        # always fitted on (KMeans refuses any other), unless the model proves otherwise.
        self._floats = np.float64
        self._limits = None  # threadpoolctl's limits while intra_op_threads holds

    def load(self) -> ModelMetadata:
        _require("sklearn", _INSTALL)
        if self.settings.intra_op_threads:  # the OpenMP and BLAS pools predict runs on, in this worker
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(self.settings.intra_op_threads)
        model = read_estimator(self.path, self.settings.parameters)
        if not callable(getattr(model, "predict", None)):
            raise RuntimeError(f"{self.path.name} holds a {type(model).__module__}.{type(model).__qualname__}, not a "
                               "scikit-learn estimator (it has no predict method)")
        self.model = model
        names = getattr(model, "feature_names_in_", None)
        if names is not None:
            self.columns = [str(c) for c in names]
            default = tabular.column_inputs(self.columns, dict.fromkeys(_text_columns(model), "BYTES"))
        else:
            default = (tabular.matrix_input(getattr(model, "n_features_in_", None)),)
        self.inputs = tabular.declared_inputs(self.settings, default)
        return ModelMetadata(self.platform, self.inputs, self._outputs())

    def _outputs(self):
        from sklearn.base import is_regressor

        classes = getattr(self.model, "classes_", None)
        if classes is None or is_regressor(self.model):
            return tabular.regressor_outputs(_targets(self.model))
        if isinstance(classes, list):  # one classes_ array per target
            raise RuntimeError("multi-output classifiers are not supported: their labels have no single tensor type")
        label, probabilities = tabular.classifier_outputs(len(classes), tabular.string_classes(classes))
        return (label, probabilities) if callable(getattr(self.model, "predict_proba", None)) else (label,)

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        x = tabular.features(inputs, self.inputs, self.columns)
        matrix = self.columns is None and x.dtype.kind == "f"
        try:
            return self._predict(x.astype(self._floats, copy=False) if matrix else x, outputs)
        except ValueError as e:
            if not (matrix and "Buffer dtype mismatch" in str(e) and self._floats == np.float64):
                raise BackendInputError(f"the model refused the input: {e}") from e
        self._floats = np.float32  # fitted on float32: KMeans and others then refuse float64
        return self.execute(inputs, outputs)

    def _predict(self, x, outputs: list[str]) -> dict[str, np.ndarray]:
        """Each output asked for: one call on the whole batch (no predict_proba for a label)."""
        results = {}
        for name in outputs:
            if name == tabular.LABEL:
                results[name] = tabular.labels_out(self.model.predict(x))
            elif name == tabular.PROBABILITIES:
                results[name] = tabular.probabilities_out(self.model.predict_proba(x))
            else:
                results[name] = _prediction(self.model.predict(x))
        return results

    def unload(self) -> None:
        self.model = None
        if self._limits is not None:
            self._limits.restore_original_limits()


def _targets(model) -> int:
    """How many values a regressor predicts per row (n_outputs_ or the coefficients' rows)."""
    if (n := getattr(model, "n_outputs_", None)) is not None:
        return int(n)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if final is not model:
        return _targets(final)
    coef = getattr(model, "coef_", None)
    return coef.shape[0] if isinstance(coef, np.ndarray) and coef.ndim == 2 else 1


def _prediction(pred) -> np.ndarray:
    out = tabular.prediction_out(pred)
    return out.reshape(-1) if out.ndim == 2 and out.shape[1] == 1 else out
