"""What the gradient-boosted tree backends (XGBoost, LightGBM, CatBoost) share: their inputs
(the feature matrix, or one input per named feature when config.toml asks for columns), their
thread count, where they run, and how a missing framework is reported. Imported only inside a
worker.

Threads: one per worker unless config.toml's intra_op_threads says more. The daemon scales a
model by its workers, and a framework that starts a thread per core in each of them would
oversubscribe the machine (and take cores from the daemon's event loop).
"""

from __future__ import annotations

import numpy as np

from inferd.backends.settings import BackendSettings
from inferd.backends.tabular import MATRIX, column_inputs, declared_inputs, matrix_input
from inferd.common.tensors import TensorSpec


def threads(settings: BackendSettings) -> int:
    return settings.intra_op_threads or 1


def on_cpu(settings: BackendSettings, framework: str) -> None:
    """These backends run on the CPU: a model configured for a GPU fails to load, saying so."""
    if settings.device.startswith("cuda"):
        raise RuntimeError(f"{framework} models run on the CPU in inferd: device {settings.device!r} cannot be honoured "
                           "(set device = \"cpu\" or \"auto\" in config.toml)")


def missing(framework: str, module: str, extra: str) -> RuntimeError:
    return RuntimeError(f"{framework} models need {module} in the daemon's environment: pip install 'inferd[{extra}]'")


def feature_inputs(settings: BackendSettings, n_features: int,
                   feature_names: list[str] | None) -> tuple[tuple[TensorSpec, ...], list[str] | None]:
    """The model's inputs and, for column inputs, the feature names in the model's order.

    The feature matrix "input" [-1, n_features] unless the model records feature names and
    config.toml's [[inputs]] names some of them: then one [-1] input per feature (FP32 unless
    declared otherwise), handed to the framework as a DataFrame with the model's column names."""
    declared = {t.name: t.datatype for t in settings.inputs}
    if feature_names and declared and MATRIX not in declared and set(declared) <= set(feature_names):
        names = [str(n) for n in feature_names]
        return column_inputs(names, dict.fromkeys(names, "FP32") | declared), names
    return declared_inputs(settings, (matrix_input(n_features),)), None


def two_class(p: np.ndarray) -> np.ndarray:
    """A binary model's probability of class 1 as the probabilities of classes 0 and 1."""
    return np.stack([1 - p, p], axis=1)
