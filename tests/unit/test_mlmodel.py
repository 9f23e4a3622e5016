"""An MLmodel file read without MLflow (inferd.backends.mlmodel): flavors, model files, the
signature as V2 tensors; and how a signature's tensors map onto a native backend's
(inferd.backends.mlflow.signature_onto), and the reason a missing flavor package gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("yaml")
from inferd.backends import mlmodel  # noqa: E402
from inferd.backends.mlflow import missing_package, signature_onto  # noqa: E402
from inferd.common.tensors import TensorSpec  # noqa: E402


def _document(inputs, outputs=None, flavors=None) -> dict:
    signature = {"inputs": json.dumps(inputs)} | ({"outputs": json.dumps(outputs)} if outputs else {})
    return {"flavors": flavors or {"python_function": {}}, "signature": signature}


def test_columns_become_one_dynamic_tensor_each_with_their_types():
    sig = mlmodel.signature(_document(
        [{"type": "long", "name": "a"}, {"type": "double", "name": "b"}, {"type": "string", "name": "s"},
         {"type": "binary", "name": "raw"}, {"type": "boolean", "name": "ok"}, {"type": "integer", "name": "i"},
         {"type": "float", "name": "f"}],
        [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]))
    assert [(t.name, t.datatype, t.shape) for t in sig.inputs] == [
        ("a", "INT64", (-1,)), ("b", "FP64", (-1,)), ("s", "BYTES", (-1,)), ("raw", "BYTES", (-1,)),
        ("ok", "BOOL", (-1,)), ("i", "INT32", (-1,)), ("f", "FP32", (-1,))]
    assert sig.columns and not sig.unnamed and sig.texts == {"s"}  # binary stays bytes
    assert sig.outputs == (TensorSpec("output", "INT64", (-1,)),)  # unnamed: "output"


def test_tensors_keep_their_shapes_and_an_unnamed_one_is_passed_bare():
    sig = mlmodel.signature(_document([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 28, 28]}}],
                                      [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}},
                                       {"type": "tensor", "tensor-spec": {"dtype": "str", "shape": [-1]}}]))
    assert sig.inputs == (TensorSpec("input", "FP32", (-1, 28, 28)),) and sig.unnamed and not sig.columns
    assert [t.name for t in sig.outputs] == ["output_0", "output_1"] and sig.outputs[1].datatype == "BYTES"


@pytest.mark.parametrize("inputs, reason", [
    ([{"type": "datetime", "name": "when"}], "'datetime', which the V2 protocol cannot carry"),
    ([{"type": "tensor", "tensor-spec": {"dtype": "complex64", "shape": [-1]}}], "'complex64'"),
    ([{"type": "long", "name": "a"}, {"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}],
     "mix columns and tensors"),
    ({"not": "a list"}, "not a list of columns or tensors"),
])
def test_signatures_inferd_cannot_serve_are_refused(inputs, reason):
    with pytest.raises(mlmodel.MLmodelError, match=reason):
        mlmodel.signature(_document(inputs))


def test_no_signature_is_none():
    assert mlmodel.signature({"flavors": {"onnx": {}}}) is None
    assert mlmodel.signature({"flavors": {"onnx": {}}, "signature": {"inputs": None}}) is None


def test_the_first_native_flavor_and_its_file(tmp_path):
    (tmp_path / "model.pkl").write_bytes(b"x")
    document = {"flavors": {"python_function": {}, "lightgbm": {"data": "model.pkl"}}}
    assert mlmodel.native_flavor(document) == "lightgbm"
    path = mlmodel.flavor_file(tmp_path, "lightgbm", document["flavors"]["lightgbm"])
    assert mlmodel.native_backend("lightgbm", path) == "sklearn"  # an LGBMClassifier pickled: scikit-learn's
    assert mlmodel.native_flavor({"flavors": {"python_function": {}, "pytorch": {}}}) is None  # python_function
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "model.keras").write_bytes(b"k")
    keras = mlmodel.flavor_file(tmp_path, "keras", {"data": "data"})
    assert keras == (tmp_path / "data" / "model.keras").resolve() and mlmodel.native_backend("keras", keras) == "tensorflow"
    (tmp_path / "data" / "custom_objects.cloudpickle").write_bytes(b"c")
    assert mlmodel.native_backend("keras", keras) == "python_function"  # (not a BACKENDS key: MLflow loads it)


@pytest.mark.parametrize("conf, reason", [({}, "names no model file"), ({"data": "../x"}, "outside the model's directory"),
                                          ({"data": "gone.onnx"}, "which the directory does not hold")])
def test_a_flavors_file_must_be_inside_the_directory(tmp_path, conf, reason):
    (tmp_path / "m").mkdir()
    (tmp_path / "x").write_bytes(b"x")
    with pytest.raises(mlmodel.MLmodelError, match=reason):
        mlmodel.flavor_file(tmp_path / "m", "onnx", conf)


def _columns(*specs):
    return mlmodel.Signature(tuple(TensorSpec(n, d, (-1,)) for n, d in specs), (), columns=True, unnamed=False)


def test_columns_with_the_backends_names_are_cast_to_its_types():
    adapt = signature_onto(_columns(("a", "INT64"), ("b", "FP64")),
                           (TensorSpec("a", "FP32", (-1,)), TensorSpec("b", "FP32", (-1,))))
    out = adapt({"a": np.array([1, 2]), "b": np.array([0.5, 1.5])})
    assert out["a"].dtype == np.float32 and out["b"].tolist() == [0.5, 1.5]


def test_columns_stack_into_the_backends_one_matrix_in_signature_order():
    adapt = signature_onto(_columns(("b", "FP64"), ("a", "INT64")), (TensorSpec("input", "FP32", (-1, 2)),))
    out = adapt({"a": np.array([1, 2]), "b": np.array([0.5, 1.5])})
    assert out["input"].dtype == np.float32 and out["input"].tolist() == [[0.5, 1], [1.5, 2]]


def test_one_tensor_is_renamed_and_what_does_not_map_is_none():
    one = mlmodel.Signature((TensorSpec("input", "FP32", (-1, 3)),), (), columns=False, unnamed=True)
    assert list(signature_onto(one, (TensorSpec("x", "FP32", (-1, 3)),))({"input": np.zeros((1, 3))})) == ["x"]
    assert signature_onto(_columns(("a", "INT64"), ("s", "BYTES")), (TensorSpec("input", "FP32", (-1, 2)),)) is None
    assert signature_onto(_columns(("a", "INT64"), ("b", "FP64"), ("c", "FP64")),
                          (TensorSpec("input", "FP32", (-1, 2)),)) is None  # 3 columns, 2 features
    assert signature_onto(one, (TensorSpec("x", "FP32", (-1,)), TensorSpec("y", "FP32", (-1,)))) is None
    assert signature_onto(one, (TensorSpec("x", "FP32", (-1, 3, 1)),)) is None  # another rank


def test_a_missing_package_is_named_with_what_to_install():
    reason = str(missing_package("xgboost", ModuleNotFoundError("No module named 'xgboost'", name="xgboost")))
    assert "'xgboost' flavor needs the Python package 'xgboost'" in reason and "pip install 'inferd[xgboost]'" in reason
    reason = str(missing_package("prophet", ModuleNotFoundError("No module named 'prophet.serialize'", name="prophet.serialize")))
    assert "package 'prophet'" in reason and "never installs a model's requirements.txt" in reason
