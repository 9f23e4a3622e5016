"""examples/make_tabular_models.py: each installed framework's example model is saved the way
that framework saves it and, loaded back with that framework, predicts its training data; a
framework that is not installed is left out with a line saying so; `keep` leaves files as they are.
(bench/formats.py serves the same models and compares the daemon's answers with these loaders'.)"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
import make_tabular_models as tabular  # noqa: E402


def _sklearn(path):
    import joblib
    return joblib.load(path).predict


def _xgboost(path):
    import xgboost
    booster = xgboost.Booster(model_file=str(path))
    return lambda x: booster.inplace_predict(x).argmax(axis=1)


def _lightgbm(path):
    import lightgbm
    booster = lightgbm.Booster(model_file=str(path))
    return lambda x: booster.predict(x).argmax(axis=1)


def _catboost(path):
    import catboost
    model = catboost.CatBoostClassifier().load_model(str(path))
    return lambda x: model.predict(x).reshape(-1).astype(np.int64)


def _mlflow(path):
    import mlflow.pyfunc
    import pandas as pd
    model = mlflow.pyfunc.load_model(str(path))
    return lambda x: np.asarray(model.predict(pd.DataFrame(x, columns=tabular.COLUMNS)))


# Keras is left to bench/formats.py (CI runs it): importing TensorFlow costs ~10 s more.
LOADERS = {
    "tabular_sklearn.joblib": _sklearn,
    "tabular_xgboost.ubj": _xgboost,
    "tabular_lightgbm.txt": _lightgbm,
    "tabular_catboost/1/model.cbm": _catboost,
    "tabular_mlflow": _mlflow,
}


@pytest.mark.parametrize("relative", list(LOADERS))
def test_an_example_model_loads_with_its_framework_and_learned_its_data(tmp_path, relative):
    module, _, builder = tabular.TABULAR[relative]
    if not tabular.installed(module):
        pytest.skip(f"{module} is not installed")
    path = builder(tmp_path / relative)
    assert path == tmp_path / relative and path.exists()
    x, y = tabular.tabular_data()
    accuracy = float((LOADERS[relative](path)(x) == y).mean())
    assert accuracy > 0.9, f"{relative}: training accuracy {accuracy:.2f}"


def test_a_framework_that_is_not_installed_is_left_out_with_a_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tabular, "installed", lambda module: False)
    assert tabular.make_tabular_examples(tmp_path) == []
    err = capsys.readouterr().err
    for relative, (module, extra, _) in tabular.TABULAR.items():
        assert f"{module} is not installed: {relative} is left out (pip install 'inferd[{extra}]')" in err
    assert list(tmp_path.iterdir()) == []


def test_keep_leaves_an_existing_model_as_it_is(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tabular, "installed", lambda module: module == "sklearn")
    existing = tmp_path / "tabular_sklearn.joblib"
    existing.write_bytes(b"edited by hand")
    assert tabular.make_tabular_examples(tmp_path, keep=True) == [existing]
    assert existing.read_bytes() == b"edited by hand"
    assert "xgboost is not installed" in capsys.readouterr().err
