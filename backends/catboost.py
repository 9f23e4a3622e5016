"""CatBoost backend: models saved as .cbm, loaded with CatBoost().load_model. Imported only
inside a worker process (`pip install 'inferd[catboost]'`).

The loss function says what the model is: Logloss, CrossEntropy, MultiClass and
MultiClassOneVsAll are classifiers ("label": INT64 for integer classes, BYTES for string
class names; "probabilities" FP32 [-1, n_classes], as CatBoostClassifier's predict and
predict_proba answer); anything else is a regressor ("prediction" FP32, [-1, n] for several
dimensions). Prediction runs on trees.threads() threads. Inputs: see backends/trees.py; a
model with categorical features takes columns (config.toml's [[inputs]], BYTES for those).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferd.backends import tabular, trees
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata

try:
    import catboost
except ImportError:  # reported by load(), in the worker, as what to install
    catboost = None

CLASSIFIERS = ("Logloss", "CrossEntropy", "MultiClass", "MultiClassOneVsAll")


class CatBoostBackend:
    platform = "catboost"

    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path
        self.settings = settings
        self.model = None
        self.classes: np.ndarray | None = None  # a classifier's classes, in probability column order
        self.threads = 1
        self.inputs = ()
        self.columns: list[str] | None = None

    def load(self) -> ModelMetadata:
        if catboost is None:
            raise trees.missing("CatBoost", "catboost", "catboost")
        trees.on_cpu(self.settings, "CatBoost")
        try:
            self.model = catboost.CatBoost().load_model(str(self.path))
        except catboost.CatBoostError as e:
            raise RuntimeError(f"not a CatBoost model CatBoost can read: {e}") from None
        self.threads = trees.threads(self.settings)
        loss = str(self.model.get_all_params().get("loss_function", "")).split(":")[0]
        names = self.model.feature_names_
        if all(n == str(i) for i, n in enumerate(names)):
            names = None  # CatBoost's own names for unnamed features
        self.inputs, self.columns = trees.feature_inputs(self.settings, len(self.model.feature_names_), names)
        if self.model.get_cat_feature_indices() and self.columns is None:
            if names is None:
                raise RuntimeError("this CatBoost model has categorical features but no feature names: fit it on a "
                                   "DataFrame (its columns become the inputs) to serve it")
            raise RuntimeError("this CatBoost model has categorical features: declare its columns in config.toml's "
                               "[[inputs]] (one [-1] tensor per feature, BYTES for the categorical ones)")
        if loss in CLASSIFIERS:
            self.classes = np.asarray(self.model.classes_)
            outputs = tabular.classifier_outputs(len(self.classes), string_labels=tabular.string_classes(self.classes))
        else:
            outputs = tabular.regressor_outputs(self.model.get_all_params().get("prediction_dimension", 1) or 1)
        return ModelMetadata(self.platform, self.inputs, outputs)

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        x = tabular.features(inputs, self.inputs, self.columns)
        if self.classes is None:
            return {tabular.PREDICTION: tabular.prediction_out(self.model.predict(x, thread_count=self.threads))}
        answer = {}
        if tabular.LABEL in outputs:
            label = self.model.predict(x, prediction_type="Class", thread_count=self.threads)
            answer[tabular.LABEL] = tabular.labels_out(np.asarray(label).reshape(-1))
        if tabular.PROBABILITIES in outputs:
            proba = self.model.predict(x, prediction_type="Probability", thread_count=self.threads)
            answer[tabular.PROBABILITIES] = tabular.probabilities_out(proba)
        return answer

    def unload(self) -> None:
        self.model = None
