"""Which backend runs a model (backends/formats.py): by extension, by content for .json and
.txt (real files saved by XGBoost, LightGBM and CatBoost, and counter-examples), by
config.toml's `backend`; and the reason when a file is none of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inferd.backends import BACKENDS
from inferd.backends.formats import JSON_PARSE_BYTES, FormatError, backend_names, detect

X = np.random.default_rng(3).random((40, 3))
Y = (X[:, 0] > 0.5).astype(int)


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _reason(path: Path, declared: str = "") -> str:
    with pytest.raises(FormatError) as e:
        detect(path, declared)
    return str(e.value)


@pytest.mark.parametrize(("name", "backend"), [
    ("m.onnx", "onnx"), ("m.pt", "pt"), ("m.pt2", "pt2"), ("m.py", "py"), ("m.joblib", "sklearn"), ("m.pkl", "sklearn"),
    ("m.pickle", "sklearn"), ("m.skops", "sklearn"), ("m.ubj", "xgboost"), ("m.cbm", "catboost"), ("m.keras", "tensorflow"),
])
def test_the_extension_decides_where_only_one_framework_uses_it(tmp_path, name, backend):
    assert detect(_write(tmp_path / name, b"anything: not read")) == backend


def test_directories_an_mlflow_model_and_a_savedmodel(tmp_path):
    _write(tmp_path / "flow" / "MLmodel", "flavors: {}\n")
    _write(tmp_path / "1" / "model.savedmodel" / "saved_model.pb", b"\x08\x01")
    assert detect(tmp_path / "flow") == "mlflow"
    assert detect(tmp_path / "1" / "model.savedmodel") == "tensorflow"
    (tmp_path / "other").mkdir()
    assert _reason(tmp_path / "other") == ("other is a directory that is neither a TensorFlow SavedModel (model.savedmodel) "
                                           "nor an MLflow model (it holds no MLmodel file)")
    assert _reason(_write(tmp_path / "model.bin", b"x")) == "model.bin: no backend reads a .bin file"


def test_xgboost_models_saved_by_xgboost_are_recognised(tmp_path):
    xgb = pytest.importorskip("xgboost")
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(X, Y)
    model.save_model(tmp_path / "model.json")
    model.save_model(tmp_path / "model.ubj")
    assert detect(tmp_path / "model.json") == "xgboost"
    assert detect(tmp_path / "model.ubj") == "xgboost"
    # Re-serialised with other key order and indentation: still XGBoost's.
    data = json.loads((tmp_path / "model.json").read_text())
    _write(tmp_path / "resaved.json", json.dumps({"version": data["version"], "learner": data["learner"]}, indent=2))
    assert detect(tmp_path / "resaved.json") == "xgboost"


def test_a_big_xgboost_json_is_judged_by_its_first_and_last_bytes(tmp_path):
    xgb = pytest.importorskip("xgboost")
    xgb.XGBRegressor(n_estimators=2, max_depth=2).fit(X, X[:, 1]).save_model(tmp_path / "small.json")
    text = (tmp_path / "small.json").read_text()
    assert text.startswith('{"learner":')
    padding = " " * JSON_PARSE_BYTES  # whitespace is valid JSON anywhere between tokens
    big = _write(tmp_path / "big.json", text.replace('{"learner":', '{"learner":' + padding, 1))
    assert detect(big) == "xgboost"
    cut = _write(tmp_path / "cut.json", big.read_bytes()[:-40])
    assert "does not end with the 'version' key" in _reason(cut)
    other = _write(tmp_path / "other.json", '{"rows": [' + padding + "]}")
    assert "does not begin with the 'learner' key" in _reason(other)
    assert detect(other, "xgboost") == "xgboost"  # config.toml's backend: not read at all


def test_lightgbm_text_models_saved_by_lightgbm_are_recognised(tmp_path):
    lgb = pytest.importorskip("lightgbm")
    booster = lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(X, Y).booster_
    booster.save_model(str(tmp_path / "model.txt"))
    assert detect(tmp_path / "model.txt") == "lightgbm"
    _write(tmp_path / "dump.json", json.dumps(booster.dump_model()))
    assert _reason(tmp_path / "dump.json") == (
        "dump.json is a LightGBM model dump (dump_model): save it with save_model to a .txt instead")


def test_other_frameworks_json_and_text_say_what_they_are(tmp_path):
    xgb = pytest.importorskip("xgboost")
    cb = pytest.importorskip("catboost")
    model = cb.CatBoostClassifier(iterations=2, verbose=0, train_dir=str(tmp_path / "cb")).fit(X, Y)
    model.save_model(str(tmp_path / "cat.json"), format="json")
    assert "is a CatBoost model saved as JSON: save it as .cbm" in _reason(tmp_path / "cat.json")
    booster = xgb.XGBClassifier(n_estimators=2, max_depth=2).fit(X, Y).get_booster()
    booster.dump_model(str(tmp_path / "dump.txt"))
    assert "is an XGBoost text dump (dump_model), which cannot be loaded" in _reason(tmp_path / "dump.txt")
    _write(tmp_path / "arch.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
    assert "a Keras architecture (to_json), which has no weights" in _reason(tmp_path / "arch.json")


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("a.json", '{"rows": [1, 2]}', "a.json is a .json file that is not an XGBoost model (no 'learner' key)"),
    ("b.json", '{"learner": {}}', "b.json is a .json file that is not an XGBoost model (no 'version' key)"),
    ("c.json", "[1, 2, 3]", "c.json is JSON but not an object (list), so not an XGBoost model"),
    ("d.json", '{"learner": ', "d.json is a .json file that is not valid JSON (Expecting value: line 1 column 13 (char 12)), "
                               "so not an XGBoost model"),
    ("e.json", b"\xff\xfe\x00binary", "e.json is a .json file that is not text, so not an XGBoost model"),
    ("f.json", "", "f.json is an empty .json file, not an XGBoost model"),
    ("a.txt", "just some notes\nversion=v4\n", "a.txt is a .txt file that is not a LightGBM model (it does not begin "
                                               "with a 'tree' line and a 'version=v<N>' line)"),
    ("b.txt", "tree\nnum_class=1\n", "b.txt is a .txt file that is not a LightGBM model (it does not begin "
                                     "with a 'tree' line and a 'version=v<N>' line)"),
    ("c.txt", bytes(range(256)) * 4, "c.txt is a .txt file that is not text, so not a LightGBM model"),
    ("d.txt", "", "d.txt is an empty .txt file, not a LightGBM model"),
])
def test_what_is_not_a_model_is_refused_with_what_it_is(tmp_path, name, content, reason):
    assert _reason(_write(tmp_path / name, content)) == reason


def test_config_tomls_backend_skips_the_content_but_must_read_such_files(tmp_path):
    notes = _write(tmp_path / "model.json", '{"rows": []}')
    assert detect(notes, "xgboost") == "xgboost"
    assert _reason(notes, "lightgbm") == "config.toml says backend = 'lightgbm', but a .json file is read by xgboost"
    pickle = _write(tmp_path / "model.pkl", b"\x80\x05N.")
    assert _reason(pickle, "xgboost") == "config.toml says backend = 'xgboost', but a .pkl file is read by sklearn"


def test_backend_names_are_the_registered_ones_and_every_format_s():
    names = backend_names(BACKENDS)
    assert set(BACKENDS) <= set(names)
    assert {"sklearn", "xgboost", "lightgbm", "catboost", "tensorflow", "mlflow", "onnx", "py"} <= set(names)
    assert names == sorted(names)


def test_a_directory_models_backend_may_be_declared_only_as_its_own(tmp_path):
    _write(tmp_path / "flow" / "MLmodel", "flavors: {}\n")
    assert detect(tmp_path / "flow", "mlflow") == "mlflow"
    assert _reason(tmp_path / "flow", "sklearn") == "config.toml says backend = 'sklearn', but flow/ is read by mlflow"
