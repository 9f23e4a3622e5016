"""backends/tabular.py: the tensor conventions of tabular models (matrix or column inputs,
classifier and regressor outputs, config.toml's declared datatypes) and the conversions
between tensors and what a framework predicts on."""

import numpy as np
import pytest

from inferd.backends import tabular
from inferd.backends.base import BackendInputError
from inferd.backends.settings import BackendSettings
from inferd.common.tensors import TensorSpec


def _settings(inputs=()) -> BackendSettings:
    return BackendSettings(model_dir="/m", max_batch_size=64, device="cpu", gpu=None, intra_op_threads=0,
                           intra_op_spinning=False, inputs=tuple(inputs), outputs=(), parameters={}, decoupled=None,
                           model_config=None, daemon_socket="", metrics_dir="", reshape={}, optional_inputs=())


def test_specs_follow_the_convention():
    assert tabular.matrix_input(4) == TensorSpec("input", "FP32", (-1, 4))
    assert tabular.matrix_input(None, "FP64") == TensorSpec("input", "FP64", (-1, -1))
    assert tabular.column_inputs(["age", "city"], {"city": "BYTES"}) == (
        TensorSpec("age", "FP64", (-1,)), TensorSpec("city", "BYTES", (-1,)))
    assert tabular.classifier_outputs(3, False) == (TensorSpec("label", "INT64", (-1,)),
                                                    TensorSpec("probabilities", "FP32", (-1, 3)))
    assert tabular.classifier_outputs(2, True)[0] == TensorSpec("label", "BYTES", (-1,))
    assert tabular.regressor_outputs() == (TensorSpec("prediction", "FP32", (-1,)),)
    assert tabular.regressor_outputs(2) == (TensorSpec("prediction", "FP32", (-1, 2)),)


def test_declared_inputs_take_config_datatypes_and_keep_the_models_shapes():
    default = (tabular.matrix_input(4),)
    declared = tabular.declared_inputs(_settings([TensorSpec("input", "FP64", (-1, 4))]), default)
    assert declared == (TensorSpec("input", "FP64", (-1, 4)),)
    assert tabular.declared_inputs(_settings(), default) == default
    columns = tabular.column_inputs(["a", "b"], {})
    declared = tabular.declared_inputs(_settings([TensorSpec("b", "BYTES", (-1,))]), columns)
    assert [t.datatype for t in declared] == ["FP64", "BYTES"]


def test_features_of_a_matrix_take_the_declared_dtype():
    specs = (tabular.matrix_input(2),)
    x = tabular.features({"input": np.ones((3, 2), np.float64)}, specs, None)
    assert x.dtype == np.float32 and x.shape == (3, 2)
    same = np.ones((3, 2), np.float32)
    assert tabular.features({"input": same}, specs, None) is same  # no copy when already right


def test_features_of_columns_are_a_dataframe_in_the_models_order():
    specs = tabular.column_inputs(["city", "age"], {"city": "BYTES", "age": "INT64"})
    inputs = {"age": np.array([30, 40], np.int64), "city": np.array([b"Oslo", b"Lima"], object)}
    frame = tabular.features(inputs, specs, ["city", "age"])
    assert list(frame.columns) == ["city", "age"]
    assert frame["city"].tolist() == ["Oslo", "Lima"]
    assert frame["age"].tolist() == [30, 40]


def test_bytes_that_are_not_utf8_are_the_callers_fault():
    specs = tabular.column_inputs(["city"], {"city": "BYTES"})
    with pytest.raises(BackendInputError, match="'city'.*UTF-8"):
        tabular.features({"city": np.array([b"\xff"], object)}, specs, ["city"])


@pytest.mark.parametrize(("classes", "expected"), [
    (np.array([0, 1, 2]), False), (np.array([0.0, 1.0]), False), (np.array([True, False]), False),
    (np.array([0.5, 1.0]), True), (np.array(["setosa", "virginica"]), True), (np.array(["a", 1], object), True),
])
def test_string_classes(classes, expected):
    assert tabular.string_classes(classes) is expected


def test_labels_out():
    ints = tabular.labels_out(np.array([2, 0, 1], np.int32))
    assert ints.dtype == np.int64 and ints.tolist() == [2, 0, 1]
    assert tabular.labels_out(np.array([1.0, 0.0])).tolist() == [1, 0]
    strings = tabular.labels_out(np.array(["setosa", "virginica"]))
    assert strings.dtype == object and strings.tolist() == [b"setosa", b"virginica"]
    assert tabular.labels_out(np.array(["a", 7], object)).tolist() == [b"a", b"7"]
    assert tabular.labels_out(np.array([], np.int64)).dtype == np.int64


def test_probabilities_and_predictions_are_fp32():
    assert tabular.probabilities_out(np.array([[0.25, 0.75]])).dtype == np.float32
    prediction = tabular.prediction_out([1.5, 2.5])
    assert prediction.dtype == np.float32 and prediction.tolist() == [1.5, 2.5]
