"""Real MLflow model directories for the tests, saved by MLflow itself (mlflow.sklearn,
mlflow.pyfunc, mlflow.onnx), and edits of their MLmodel files for the hostile cases."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BOGUS_REQUIREMENT = "inferd-bogus-requirement"  # named in a model's requirements.txt: must never be installed

# Feature rows of the tabular models: a DataFrame (int and float columns) and the same as a matrix.
FRAME = pd.DataFrame({"a": np.arange(12, dtype=np.int64), "b": np.linspace(0.0, 1.0, 12)})
MATRIX = FRAME.to_numpy(np.float32)
LABELS = (FRAME.a > 5).astype(np.int64).to_numpy()


@contextlib.contextmanager
def quiet():
    """MLflow warns at length while saving and loading (pickle formats, integer columns...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _quietly(save):
    @functools.wraps(save)
    def wrapped(*args, **kwargs):
        with quiet():
            return save(*args, **kwargs)
    return wrapped


def _requirements(extra: list[str] | None = None) -> list[str]:
    # Given, so MLflow does not infer them (slow); never installed by inferd either way.
    return ["mlflow-skinny", *(extra or [])]


@_quietly
def sklearn_frame(root: Path) -> Path:
    """A LogisticRegression fitted on a DataFrame; a column-based signature (long, double)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(FRAME, LABELS)
    path = root / "sklearn_frame"
    mlflow.sklearn.save_model(model, path, signature=infer_signature(FRAME, model.predict(FRAME)),
                              serialization_format="cloudpickle", pip_requirements=_requirements())
    return path


@_quietly
def sklearn_matrix(root: Path) -> Path:
    """A Ridge regressor fitted on a float32 matrix; a tensor signature ([-1, 2] float32)."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge

    model = Ridge().fit(MATRIX, FRAME.b.to_numpy() * 3 + 1)
    path = root / "sklearn_matrix"
    mlflow.sklearn.save_model(model, path, signature=infer_signature(MATRIX, model.predict(MATRIX)),
                              serialization_format="cloudpickle", pip_requirements=_requirements([BOGUS_REQUIREMENT]))
    return path


WORDS = pd.DataFrame({"text": ["hello world", "a b c", "ünïcode here too"], "times": np.array([1, 2, 3], np.int64)})


@_quietly
def pyfunc_words(root: Path, signature: bool = True) -> Path:
    """A python_function model (any code, pickled by value): a DataFrame of text and a count in,
    two columns out; negative counts raise in the model's code."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class Words(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            if (model_input["times"] < 0).any():
                raise ValueError("times must not be negative")
            words = model_input["text"].str.split().str.len()
            return pd.DataFrame({"words": words.astype(np.int64) * model_input["times"],
                                 "shout": model_input["text"].str.upper()})

    path = root / ("words" if signature else "words_unsigned")
    mlflow.pyfunc.save_model(path, python_model=Words(), pip_requirements=_requirements(),
                             signature=infer_signature(WORDS, Words().predict(None, WORDS)) if signature else None)
    return path


@_quietly
def onnx_add(root: Path) -> Path:
    """An ONNX graph y = x + 1 (float32 [-1, 3]) saved by mlflow.onnx."""
    import mlflow.onnx
    import onnx
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "add",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = root / "onnx_add"
    mlflow.onnx.save_model(model, path, pip_requirements=_requirements())
    return path


def edit_mlmodel(path: Path, change) -> Path:
    """`change(document)` applied to the directory's MLmodel."""
    mlmodel = path / "MLmodel"
    document = yaml.safe_load(mlmodel.read_text())
    change(document)
    mlmodel.write_text(yaml.safe_dump(document))
    return path


def missing_flavor(path: Path) -> Path:
    """A python_function model whose flavor's module is not installed anywhere."""
    def change(document):
        document["flavors"]["python_function"]["loader_module"] = "inferd_no_such_flavor"
        document["flavors"]["no_such_flavor"] = {"data": "python_model.pkl"}
    return edit_mlmodel(path, change)


def no_others_write(path: Path) -> Path:
    """Take away others' write access (a fresh tmp dir may have it under a loose umask)."""
    for entry in [path, *path.rglob("*")]:
        os.chmod(entry, entry.stat().st_mode & ~0o002)
    return path


@_quietly
def xgboost_classifier(root: Path) -> Path:
    """An XGBClassifier saved by mlflow.xgboost; a tensor signature ([-1, 2] float32)."""
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature

    model = xgboost.XGBClassifier(n_estimators=4, max_depth=2).fit(MATRIX, LABELS)
    path = root / "xgboost_classifier"
    mlflow.xgboost.save_model(model, path, signature=infer_signature(MATRIX, model.predict(MATRIX)),
                              pip_requirements=_requirements())
    return path


@_quietly
def lightgbm_booster(root: Path) -> Path:
    """A LightGBM regression Booster saved by mlflow.lightgbm; a column signature (long, double)."""
    import lightgbm
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    data = lightgbm.Dataset(FRAME, FRAME.b.to_numpy() * 2, params={"min_data_in_bin": 1, "verbose": -1})
    booster = lightgbm.train({"objective": "regression", "min_data_in_leaf": 1, "verbose": -1}, data, num_boost_round=3)
    path = root / "lightgbm_booster"
    mlflow.lightgbm.save_model(booster, path, signature=infer_signature(FRAME, booster.predict(FRAME)),
                               pip_requirements=_requirements())
    return path


@_quietly
def keras_dense(root: Path) -> Path:
    """A small Keras model (one Dense layer over 3 features) saved by mlflow.tensorflow as .keras."""
    import keras
    import mlflow.tensorflow
    from mlflow.models import infer_signature

    inputs = keras.Input((3,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2, name="scores")(inputs))
    x = MATRIX[:, :1].repeat(3, axis=1)
    path = root / "keras_dense"
    mlflow.tensorflow.save_model(model, path, signature=infer_signature(x, model.predict(x, verbose=0)),
                                 keras_model_kwargs={"save_format": "keras"}, pip_requirements=_requirements())
    return path
