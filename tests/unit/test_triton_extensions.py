"""Pure parts of the Triton extensions: classification's top k (order, ties, every numeric
type, Triton's score text, shapes), the load override's key mapping, and the config.toml an
upload writes (read back by tomllib to the same keys)."""

import tomllib

import numpy as np
import pytest

from inferd.common.errors import InferdError
from inferd.common.tensors import TensorSpec
from inferd.config.triton_override import from_triton
from inferd.daemon.classification import MAX_RESULTS, plan, top_k
from inferd.daemon.models.upload import check_files, to_toml


def test_top_k_orders_by_score_ties_to_the_lower_index_with_labels_where_there_are_some():
    scores = np.array([[1, 3, 3, 2], [0, 0, 0, 0]], np.int16)
    assert top_k(scores, 3, True, ("a", "b")).tolist() == [[b"3:1:b", b"3:2", b"2:3"], [b"0:0:a", b"0:1:b", b"0:2"]]


@pytest.mark.parametrize("dtype, text", [(np.uint64, "18446744073709551615"), (np.int8, "-1"), (np.float16, "0.500000"),
                                         (np.float64, "1000000.125000"), (np.float32, "0.100000")])
def test_scores_are_written_as_cpp_to_string_writes_them(dtype, text):
    value = {np.uint64: 2**64 - 1, np.int8: -1, np.float16: 0.5, np.float64: 1000000.125, np.float32: 0.1}[dtype]
    out = top_k(np.array([value], dtype), 1, False, ())
    assert out.shape == (1,) and out[0] == f"{text}:0".encode()


def test_unsigned_scores_sort_without_wrapping():
    assert top_k(np.array([[1, 2**63 + 5, 2**63]], np.uint64), 2, True, ()).tolist() == \
        [[f"{2**63 + 5}:1".encode(), f"{2**63}:2".encode()]]


def test_k_is_clamped_and_the_rows_classes_are_every_element_of_the_row():
    out = top_k(np.arange(12, dtype=np.float32).reshape(2, 2, 3), 100, True, ())
    assert out.shape == (2, 6) and out[1, 0] == b"11.000000:5"
    assert top_k(np.arange(6, dtype=np.int32).reshape(2, 3), 2, False, ()).tolist() == [b"5:5", b"4:4"]


def test_plan_checks_k_type_and_the_result_count():
    specs = (TensorSpec("p", "FP32", (-1, 10)), TensorSpec("b", "BYTES", (-1, 10)), TensorSpec("d", "FP32", (-1, -1)))
    assert plan({"p": {"classification": 3}, "q": {"binary_data": True}}, specs, 2, True) == (("p", 3),)
    assert plan({"p": {"binary_data": True}}, specs, 2, True) is None
    assert plan({"p": {"classification": 10**9}}, specs, 64, True) == (("p", 10**9),)  # clamped to 10 classes
    for params, name in [({"classification": 0}, "p"), ({"classification": "3"}, "p"), ({"classification": 1}, "b"),
                         ({"classification": 1}, "nope")]:
        with pytest.raises(InferdError):
            plan({name: params}, specs, 1, True)
    with pytest.raises(InferdError):  # dynamic classes: checked on the result
        top_k(np.zeros((2, MAX_RESULTS), np.float32), MAX_RESULTS, True, ())


def test_the_override_maps_tritons_keys_and_refuses_the_rest():
    data = from_triton("m", '{"max_batch_size": "4", "input": [{"name": "x", "data_type": "TYPE_STRING", "dims": ["3"], '
                            '"format": "FORMAT_NHWC"}], "dynamic_batching": {"max_queue_delay_microseconds": 1500}, '
                            '"instance_group": [{"count": 2, "kind": "KIND_GPU", "gpus": [1]}, '
                            '{"count": 1, "kind": "KIND_GPU", "gpus": [1]}], '
                            '"parameters": {"k": {"string_value": "v"}}}')
    assert data == {"max_batch_size": 4, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1, 3], "format": "FORMAT_NHWC"}],
                    "max_queue_delay_ms": 1.5, "max_workers": 3, "device": "cuda:1", "parameters": {"k": "v"}}
    for bad in ['{"ensemble_scheduling": {}}', '{"instance_group": [{"kind": "KIND_CPU"}, {"kind": "KIND_GPU"}]}',
                '{"parameters": {"k": {"int_value": 3}}}', "nul", '{"max_batch_size": 2.5}']:
        with pytest.raises(InferdError):
            from_triton("m", bad)


def test_the_written_config_reads_back_as_the_same_keys():
    data = {"max_batch_size": 4, "max_queue_delay_ms": 1.5, "device": "cuda:0",
            "outputs": [{"name": 'o"ut\n', "datatype": "FP32", "shape": [-1, 5], "label_filename": "l.txt"}],
            "parameters": {"weird key": 'va"l\\ue'}}
    assert tomllib.loads(to_toml(data)) == data


def test_an_upload_needs_a_model_file_and_plain_names():
    check_files("m", {"1/model.onnx": b"x", "labels.txt": b"a"})
    for files in ({"labels.txt": b"a"}, {"1/model.onnx": b"x", "a/../b": b""}, {"1/model.py": b""}, {"": b""}):
        with pytest.raises(InferdError):
            check_files("m", files)
