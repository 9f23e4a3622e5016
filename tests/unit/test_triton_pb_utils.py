"""triton_python_backend_utils as inferd provides it (inferd.backends.triton.pb_utils): Triton's
names, types and rules, without a model or a worker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inferd.backends.triton import pb_utils
from inferd.backends.triton.pb_config import normalized


def test_datatype_tables():
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.numpy_to_triton_string(np.int64) == "TYPE_INT64"
    assert pb_utils.numpy_to_triton_string(np.dtype("S3")) == "TYPE_STRING"
    assert pb_utils.numpy_to_triton_type(np.float16) == 10 and pb_utils.triton_to_numpy_type(8) is np.int32
    assert pb_utils.numpy_to_triton_string(np.complex64) is None


def test_bytes_serialization_round_trips():
    tensor = np.array([b"a", b"", "\u00e9"], dtype=object)
    flat = pb_utils.serialize_byte_tensor(tensor)
    assert flat.dtype == np.uint8 and bytes(flat[:5]) == b"\x01\x00\x00\x00a"
    assert pb_utils.deserialize_bytes_tensor(flat).tolist() == [b"a", b"", "\u00e9".encode()]
    assert pb_utils.serialize_byte_tensor(np.array([], dtype=object)) is None


def test_tensor():
    t = pb_utils.Tensor("x", np.arange(6, dtype=np.int32).reshape(2, 3))
    assert (t.name(), t.shape(), t.triton_dtype(), t.is_cpu()) == ("x", [2, 3], 8, True)
    assert pb_utils.Tensor.from_dlpack("y", t.to_dlpack()).as_numpy().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert pb_utils.Tensor("z", np.zeros(2, np.float32), triton_dtype=8).as_numpy().dtype == np.int32  # reinterpreted
    with pytest.raises(pb_utils.TritonModelException, match="np.object_"):
        pb_utils.Tensor("s", np.array(["text"]))


def test_errors_and_responses():
    error = pb_utils.TritonError("gone", pb_utils.TritonError.NOT_FOUND)
    assert (error.message(), error.code(), str(error)) == ("gone", 2, "gone")
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error() and response.error() is error and response.output_tensors() == []
    assert json.loads(pb_utils.InferenceResponse(parameters={"a": 1}).parameters()) == {"a": 1}
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceResponse(output_tensors="not a list")
    out = pb_utils.Tensor("OUT", np.zeros(1))
    assert pb_utils.get_output_tensor_by_name(pb_utils.InferenceResponse([out]), "OUT") is out
    assert pb_utils.get_output_tensor_by_name(pb_utils.InferenceResponse([out]), "NONE") is None


def test_a_request_built_by_a_model():
    request = pb_utils.InferenceRequest(model_name="add_sub", inputs=[pb_utils.Tensor("A", np.zeros(1))],
                                        requested_output_names=["B"], parameters={"k": "v"}, timeout=2_000_000)
    assert request.requested_output_names() == ["B"] and json.loads(request.parameters()) == {"k": "v"}
    assert request._call()["timeout_s"] == 2.0  # Triton's timeout is in microseconds
    assert pb_utils.get_input_tensor_by_name(request, "A").name() == "A"
    with pytest.raises(pb_utils.TritonModelException, match="response sender"):
        request.get_response_sender()
    with pytest.raises(pb_utils.TritonModelException, match="Correlation ID"):
        pb_utils.InferenceRequest(correlation_id=1.5, inputs=[], requested_output_names=[], model_name="m")


def test_normalized_config_has_numbers_for_protobufs_int64_strings():
    config = normalized({"name": "m", "input": [{"name": "A", "data_type": "TYPE_FP32", "dims": ["-1", "3"]}],
                         "dynamic_batching": {"max_queue_delay_microseconds": "100"}})
    assert config["input"][0]["dims"] == [-1, 3] and config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert (config["max_batch_size"], config["output"]) == (0, [])


def _config(**more) -> pb_utils.ModelConfig:
    return pb_utils.ModelConfig(json.dumps({"name": "m", "max_batch_size": 0, "input": [], "output": []} | more))


def test_model_config_keeps_tritons_rules():
    config = _config(max_batch_size=8, input=[{"name": "A", "data_type": "TYPE_FP32", "dims": [3]}])
    with pytest.raises(ValueError, match="configuration specified max_batch_size 8"):
        config.set_max_batch_size(4)
    config.set_max_batch_size(16)
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [3]})  # the same: nothing to add
    with pytest.raises(ValueError, match="the model expects dims \\[4\\]"):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [4]})
    with pytest.raises(ValueError, match="missing 'dims'"):
        config.add_output({"name": "B", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="property other than"):
        config.add_output({"name": "B", "data_type": "TYPE_FP32", "dims": [1], "format": "x"})
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": False})
    with pytest.raises(ValueError, match="trying to change decoupled"):
        config.set_model_transaction_policy({"decoupled": True})
    assert config.as_dict()["max_batch_size"] == 16 and config.as_dict()["dynamic_batching"] == {}
    with pytest.raises(ValueError, match="sequence_batching"):
        _config(sequence_batching={}).set_dynamic_batching()


def test_using_decoupled_and_config_lookups():
    config = {"input": [{"name": "A"}], "output": [{"name": "B"}], "model_transaction_policy": {"decoupled": True}}
    assert pb_utils.using_decoupled_model_transaction_policy(config)
    assert pb_utils.get_input_config_by_name(config, "A") == {"name": "A"}
    assert pb_utils.get_output_config_by_name(config, "A") is None


def test_logger_and_unknown_names():
    pb_utils.Logger.log_info("info")
    pb_utils.Logger.log("verbose", pb_utils.Logger.VERBOSE)
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        pb_utils.Nonexistent  # noqa: B018


def test_an_input_the_model_changes_in_place_is_its_own_copy():
    """inferd's inputs are read-only views of shared memory; Triton's models may write to theirs."""
    shared = np.arange(4, dtype=np.float32)
    shared.flags.writeable = False
    tensor = pb_utils.Tensor("x", shared)
    tensor.as_numpy()[:] /= 2
    assert tensor.as_numpy().tolist() == [0, 0.5, 1, 1.5] and shared.tolist() == [0, 1, 2, 3]


def test_bls_arguments_inferd_accepts_and_model_control_it_refuses():
    memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
    request = pb_utils.InferenceRequest(model_name="m", inputs=[], requested_output_names=[], preferred_memory=memory,
                                        trace=pb_utils.InferenceTrace())
    assert request.model_name == "m" and pb_utils.InferenceTrace().get_context() is None
    with pytest.raises(AttributeError, match="load_model is not supported by inferd"):
        pb_utils.load_model("m")
