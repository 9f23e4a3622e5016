"""XGBoost backend: boosters saved as .ubj (UBJSON) or XGBoost's .json, answered by
Booster.inplace_predict on the batch as it arrives (no DMatrix). Imported only inside a worker
process (`pip install 'inferd[xgboost]'`).

The objective says what the model is: binary:logistic/logitraw/hinge and multi:softprob/softmax
are classifiers ("label" INT64, "probabilities" FP32 [-1, n_classes], as XGBClassifier's
predict and predict_proba answer); anything else is a regressor ("prediction" FP32, [-1,
n_targets] for several targets). Inputs: see backends/trees.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from inferd.backends import tabular, trees
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata

try:
    import xgboost
except ImportError:  # reported by load(), in the worker, as what to install
    xgboost = None

# A whole UBJSON model ends with its "version" key's array and the closing brace (XGBoost
# writes its keys sorted, "learner" then "version").
UBJ_TAIL_BYTES = 64
UBJ_LAST_KEY = b"version["
BINARY = ("binary:logistic", "binary:logitraw", "binary:hinge")
MULTICLASS = ("multi:softprob", "multi:softmax")


class XGBoostBackend:
    platform = "xgboost"

    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path
        self.settings = settings
        self.booster = None
        self.objective = ""
        self.inputs = ()
        self.columns: list[str] | None = None

    def load(self) -> ModelMetadata:
        if xgboost is None:
            raise trees.missing("XGBoost", "xgboost", "xgboost")
        trees.on_cpu(self.settings, "XGBoost")
        if self.path.suffix == ".ubj" and not _ubj_complete(self.path):
            raise RuntimeError("not an XGBoost model XGBoost can read whole: the .ubj file does not end with its last key "
                               "('version') and closing brace, so it was cut short (a copy still being written, a "
                               "truncated file) or is not XGBoost's; XGBoost would crash reading it")
        self.booster = xgboost.Booster()
        try:
            self.booster.load_model(str(self.path))
        except xgboost.core.XGBoostError as e:
            raise RuntimeError(f"not an XGBoost model XGBoost can read: {_first_line(e)}") from None
        self.booster.set_param({"nthread": trees.threads(self.settings)})
        learner = json.loads(self.booster.save_config())["learner"]
        self.objective = learner["objective"]["name"]
        params = learner["learner_model_param"]
        n_targets = int(params.get("num_target", 1))
        self.inputs, self.columns = trees.feature_inputs(self.settings, self.booster.num_features(),
                                                         self.booster.feature_names)
        if self.objective in BINARY + MULTICLASS:
            if n_targets > 1:
                raise RuntimeError(f"a multi-label XGBoost classifier ({n_targets} targets, {self.objective}) "
                                   "is not served yet: only single-label classifiers and regressors")
            n_classes = 2 if self.objective in BINARY else int(params["num_class"])
            outputs = tabular.classifier_outputs(n_classes, string_labels=False)
        else:
            outputs = tabular.regressor_outputs(n_targets)
        return ModelMetadata(self.platform, self.inputs, outputs)

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        x = tabular.features(inputs, self.inputs, self.columns)
        if self.objective not in BINARY + MULTICLASS:
            return {tabular.PREDICTION: tabular.prediction_out(self.booster.inplace_predict(x))}
        if self.objective == "multi:softmax":
            return self._softmax(x, outputs)
        proba = self.booster.inplace_predict(x)
        if self.objective in BINARY:
            if self.objective == "binary:logitraw":
                proba = 1 / (1 + np.exp(-proba))
            label = proba > 0.5  # XGBClassifier.predict's threshold
            proba = trees.two_class(proba)
        else:
            label = np.argmax(proba, axis=1)
        answer = {tabular.LABEL: tabular.labels_out(label)}
        if tabular.PROBABILITIES in outputs:
            answer[tabular.PROBABILITIES] = tabular.probabilities_out(proba)
        return answer

    def _softmax(self, x, outputs: list[str]) -> dict[str, np.ndarray]:
        """multi:softmax predicts the class; its probabilities, when asked for, come from the
        margins (one more run)."""
        answer = {}
        if tabular.LABEL in outputs:
            answer[tabular.LABEL] = tabular.labels_out(self.booster.inplace_predict(x))
        if tabular.PROBABILITIES in outputs:
            margin = self.booster.inplace_predict(x, predict_type="margin").astype(np.float64)
            e = np.exp(margin - margin.max(axis=1, keepdims=True))
            answer[tabular.PROBABILITIES] = tabular.probabilities_out(e / e.sum(axis=1, keepdims=True))
        return answer

    def unload(self) -> None:
        self.booster = None


def _first_line(error: Exception) -> str:
    """XGBoost's error without its C++ stack trace."""
    lines = [line for line in str(error).splitlines() if line.strip() and not line.lstrip().startswith("Stack trace")]
    return lines[0] if lines else type(error).__name__


def _ubj_complete(path: Path) -> bool:
    """Whether a UBJSON model reaches its end. XGBoost (3.x) crashes the process, or reads a
    length from the cut and allocates without bound, on a .ubj file cut short, instead of
    raising. Reads the first byte and the last UBJ_TAIL_BYTES."""
    with open(path, "rb") as f:
        first = f.read(1)
        size = f.seek(0, 2)
        f.seek(max(0, size - UBJ_TAIL_BYTES))
        tail = f.read()
    return first == b"{" and tail.endswith(b"}") and UBJ_LAST_KEY in tail
