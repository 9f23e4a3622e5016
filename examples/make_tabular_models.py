"""One small tabular classifier per framework, saved the way each framework saves it, for the
examples, docs/model-formats.md and bench/formats.py.

Every model learns the same seeded data (20 FP32 features, 3 classes), so one request body fits
them all. A framework that is not installed is left out with a line on stderr.

    python examples/make_tabular_models.py DIR    # DIR/tabular_sklearn.joblib, ..., DIR/tabular_mlflow/

`examples/make_models.py` writes these too (beside the ONNX examples).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import pathlib
import shutil
import sys
import warnings

import numpy as np

N_FEATURES = 20
N_CLASSES = 3
COLUMNS = [f"f{i}" for i in range(N_FEATURES)]  # the MLflow example is fitted on a DataFrame


def tabular_data(rows: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(X FP32 [rows, 20], y INT64 [rows]): the class is the argmax of a fixed linear map, so
    every framework learns it well and their answers can be compared."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, N_FEATURES)).astype(np.float32)
    weights = np.random.default_rng(1000 + seed).standard_normal((N_FEATURES, N_CLASSES))
    return x, np.argmax(x @ weights, axis=1).astype(np.int64)


def _parent(path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def build_sklearn(path: pathlib.Path) -> pathlib.Path:
    """A scikit-learn Pipeline (scaler + logistic regression) saved with joblib: `.joblib`."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = tabular_data()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    joblib.dump(model, _parent(path))
    return path


def build_xgboost(path: pathlib.Path) -> pathlib.Path:
    """An XGBClassifier saved with its own save_model: `.ubj` (Universal Binary JSON)."""
    import xgboost

    x, y = tabular_data()
    model = xgboost.XGBClassifier(n_estimators=50, max_depth=4, n_jobs=1, random_state=0).fit(x, y)
    model.save_model(_parent(path))
    return path


def build_lightgbm(path: pathlib.Path) -> pathlib.Path:
    """A LightGBM classifier's booster saved as LightGBM's text model file: `.txt`."""
    import lightgbm

    x, y = tabular_data()
    model = lightgbm.LGBMClassifier(n_estimators=50, num_leaves=15, n_jobs=1, random_state=0, verbose=-1)
    model.fit(x, y).booster_.save_model(str(_parent(path)))
    return path


def build_catboost(path: pathlib.Path) -> pathlib.Path:
    """A CatBoostClassifier saved in CatBoost's binary format: `.cbm`."""
    import catboost

    x, y = tabular_data()
    model = catboost.CatBoostClassifier(iterations=50, depth=4, thread_count=1, random_seed=0,
                                        verbose=False, allow_writing_files=False)
    model.fit(x, y).save_model(str(_parent(path)), format="cbm")
    return path


def build_keras(path: pathlib.Path) -> pathlib.Path:
    """A small Dense network (input "input" [-1, 20] -> softmax "probabilities" [-1, 3]) saved
    as a Keras v3 file: `.keras`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    x, y = tabular_data()
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(N_FEATURES,), name="input")
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = keras.layers.Dense(N_CLASSES, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=20, batch_size=32, verbose=0)
    model.save(_parent(path))
    return path


def build_mlflow(path: pathlib.Path) -> pathlib.Path:
    """An MLflow model directory (MLmodel + the sklearn flavor's file: model.skops from MLflow 3,
    model.pkl before), of a logistic regression fitted on a pandas DataFrame: its signature names
    one FP32 column per feature, f0..f19."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    x, y = tabular_data()
    frame = pd.DataFrame(x, columns=COLUMNS)
    model = LogisticRegression(max_iter=500).fit(frame, y)
    if path.exists():  # save_model refuses a directory that exists
        shutil.rmtree(path)
    _parent(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(model, str(path), signature=infer_signature(frame, model.predict(frame)))
    return path


# name in the models directory -> (module that must be importable, its pip extra, builder).
TABULAR = {
    "tabular_sklearn.joblib": ("sklearn", "sklearn", build_sklearn),
    "tabular_xgboost.ubj": ("xgboost", "xgboost", build_xgboost),
    "tabular_lightgbm.txt": ("lightgbm", "lightgbm", build_lightgbm),
    "tabular_catboost/1/model.cbm": ("catboost", "catboost", build_catboost),  # full layout
    "tabular_keras.keras": ("keras", "tensorflow", build_keras),
    "tabular_mlflow": ("mlflow", "mlflow", build_mlflow),  # a directory holding MLmodel
}


def installed(module: str) -> bool:
    if module == "mlflow":  # the MLflow example is an sklearn flavor: it needs both
        return all(importlib.util.find_spec(m) is not None for m in ("mlflow", "sklearn", "pandas"))
    return importlib.util.find_spec(module) is not None


def make_tabular_examples(root: pathlib.Path, keep: bool = False) -> list[pathlib.Path]:
    """Each framework's model that its package allows; `keep`: models that exist stay as they are."""
    written = []
    for relative, (module, extra, builder) in TABULAR.items():
        path = root / relative
        if not installed(module):
            print(f"{module} is not installed: {relative} is left out (pip install 'inferd[{extra}]')",
                  file=sys.stderr)
            continue
        written.append(path if keep and path.exists() else builder(path))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=pathlib.Path, help="model repository to write into")
    parser.add_argument("--keep", action="store_true", help="leave models that exist as they are")
    args = parser.parse_args()
    for path in make_tabular_examples(args.dir, keep=args.keep):
        print(path)


if __name__ == "__main__":
    main()
