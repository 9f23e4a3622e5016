"""Gradient-boosted tree models saved by the real frameworks, for the tests of the XGBoost,
LightGBM and CatBoost backends: each save returns the fitted estimator, whose own predict and
predict_proba the tests compare inferd's answers with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RNG = np.random.default_rng(25)
N_FEATURES = 5
ANIMALS = np.array(["cat", "dog", "eel"])


def data(rows: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, and binary, three-class and real-valued targets that depend on them."""
    x = RNG.standard_normal((rows, N_FEATURES)).astype(np.float32)
    binary = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    three = np.digitize(x[:, 2] - x[:, 0], [-0.5, 0.5])
    real = 3 * x[:, 0] - x[:, 3] ** 2
    return x, binary, three, real


def save_xgboost(kind: str, path: Path, **kwargs):
    import xgboost as xgb

    x, binary, three, real = data()
    params = {"n_estimators": 8, "max_depth": 3, **kwargs}
    model = {"binary": lambda: xgb.XGBClassifier(**params).fit(x, binary),
             "multiclass": lambda: xgb.XGBClassifier(**params).fit(x, three),
             "regressor": lambda: xgb.XGBRegressor(**params).fit(x, real)}[kind]()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_model(str(path))
    return model


def save_lightgbm(kind: str, path: Path):
    import lightgbm as lgb

    x, binary, three, real = data()
    params = {"n_estimators": 8, "num_leaves": 7, "verbose": -1}
    model = {"binary": lambda: lgb.LGBMClassifier(**params).fit(x, binary),
             "multiclass": lambda: lgb.LGBMClassifier(**params).fit(x, three),
             "regressor": lambda: lgb.LGBMRegressor(**params).fit(x, real)}[kind]()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.booster_.save_model(str(path))
    return model


def save_catboost(kind: str, path: Path):
    import catboost as cb

    x, binary, three, real = data()
    params = {"iterations": 8, "depth": 3, "verbose": 0, "thread_count": 1, "allow_writing_files": False}
    model = {"binary": lambda: cb.CatBoostClassifier(**params).fit(x, binary),
             "strings": lambda: cb.CatBoostClassifier(**params).fit(x, ANIMALS[three]),
             "regressor": lambda: cb.CatBoostRegressor(**params).fit(x, real)}[kind]()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_model(str(path))
    return model


def save_catboost_categorical(path: Path):
    """A CatBoost classifier fitted on a DataFrame with a categorical column ("colour") beside a
    numeric one ("size"); returns it and rows of such a frame to predict on."""
    import catboost as cb
    import pandas as pd

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"size": rng.standard_normal(200).astype(np.float32),
                          "colour": rng.choice(["red", "green", "blue"], 200)})
    target = ((frame["colour"] == "red") | (frame["size"] > 1)).astype(np.int64)
    model = cb.CatBoostClassifier(iterations=8, verbose=0, cat_features=["colour"], allow_writing_files=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.fit(frame, target).save_model(str(path))
    return model, frame[:20]
