"""LightGBM backend: boosters saved as LightGBM's text model (.txt), loaded with
lgb.Booster(model_file=...). Imported only inside a worker process (`pip install
'inferd[lightgbm]'`).

The objective says what the model is: binary and multiclass/multiclassova are classifiers
("label" INT64, "probabilities" FP32 [-1, n_classes], as LGBMClassifier's predict and
predict_proba answer); anything else is a regressor ("prediction" FP32). Prediction runs on
trees.threads() threads (one per worker unless intra_op_threads says more). Inputs: see
backends/trees.py; LightGBM's own names for unnamed features (Column_0, ...) do not count as
names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inferd.backends import tabular, trees
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import ModelMetadata

try:
    import lightgbm
except ImportError:  # reported by load(), in the worker, as what to install
    lightgbm = None

CLASSIFIERS = ("binary", "multiclass", "multiclassova")
END_OF_TREES = b"\nend of trees\n"
PARAMETERS = b"\nparameters:\n"
END_OF_PARAMETERS = b"\nend of parameters\n"
_MARKERS = (END_OF_TREES, PARAMETERS, END_OF_PARAMETERS)
_LONGEST = max(map(len, _MARKERS))
_CHUNK = 1 << 20


class LightGBMBackend:
    platform = "lightgbm"

    def __init__(self, path: Path, settings: BackendSettings) -> None:
        self.path = path
        self.settings = settings
        self.booster = None
        self.classifier = False
        self.threads = 1
        self.inputs = ()
        self.columns: list[str] | None = None

    def load(self) -> ModelMetadata:
        if lightgbm is None:
            raise trees.missing("LightGBM", "lightgbm", "lightgbm")
        trees.on_cpu(self.settings, "LightGBM")
        if not _complete(self.path):
            raise RuntimeError("the LightGBM model file ends before its 'end of trees' or 'end of parameters' line: it was "
                               "cut short (a copy still being written, or a truncated file); LightGBM would crash reading it")
        try:
            self.booster = lightgbm.Booster(model_file=str(self.path))
        except lightgbm.basic.LightGBMError as e:
            raise RuntimeError(f"not a LightGBM model LightGBM can read: {e}") from None
        self.threads = trees.threads(self.settings)
        objective = str(self.booster.params.get("objective", "")).split()[0] if self.booster.params.get("objective") else ""
        self.classifier = objective in CLASSIFIERS
        names = self.booster.feature_name()
        if all(n == f"Column_{i}" for i, n in enumerate(names)):
            names = None
        self.inputs, self.columns = trees.feature_inputs(self.settings, self.booster.num_feature(), names)
        n_outputs = self.booster.num_model_per_iteration()
        if self.classifier:
            outputs = tabular.classifier_outputs(2 if objective == "binary" else n_outputs, string_labels=False)
        else:
            outputs = tabular.regressor_outputs(n_outputs)
        return ModelMetadata(self.platform, self.inputs, outputs)

    def execute(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        x = tabular.features(inputs, self.inputs, self.columns)
        pred = self.booster.predict(x, num_threads=self.threads)
        if not self.classifier:
            return {tabular.PREDICTION: tabular.prediction_out(pred)}
        proba = trees.two_class(pred) if pred.ndim == 1 else pred
        answer = {tabular.LABEL: tabular.labels_out(np.argmax(proba, axis=1))}  # LGBMClassifier.predict's choice
        if tabular.PROBABILITIES in outputs:
            answer[tabular.PROBABILITIES] = tabular.probabilities_out(proba)
        return answer

    def unload(self) -> None:
        self.booster = None


def _complete(path: Path) -> bool:
    """Whether LightGBM's text model reaches its 'end of trees' line, and, when it goes on to
    its parameters, their 'end of parameters' line. LightGBM (4.x) aborts or crashes the process
    on a file cut short inside either, instead of raising. One pass of bounded reads, carrying
    the longest marker's length across chunks."""
    found: set[bytes] = set()
    carry = b""
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            window = carry + chunk
            found.update(m for m in _MARKERS if m in window)
            carry = window[-_LONGEST:]
    return END_OF_TREES in found and (PARAMETERS not in found or END_OF_PARAMETERS in found)
