"""Load with a configuration override (Triton's repository extension) through tritonclient,
HTTP and gRPC, as its simple_*_model_control examples do: the override's keys take effect for
that load (max_batch_size, dynamic batching, tensors' format and labels, instance count), a
malformed or unsupported one is refused with the reason and changes nothing, and the next
load without one goes back to config.toml."""

from __future__ import annotations

import json

import make_models
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("override")
    make_models.build_add_sub(root / "simple" / "1" / "model.onnx")
    (root / "simple" / "config.toml").write_text("max_batch_size = 8\nmax_workers = 1\n")
    with DaemonProcess(root) as d:
        [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
        http = httpclient.InferenceServerClient(d.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(event["address"])
        yield d, http, grpc
        http.close()
        grpc.close()


def _client(served, protocol):
    return served[1] if protocol == "http" else served[2]


def _config(client, protocol) -> dict:
    config = client.get_model_config("simple")
    return config if protocol == "http" else json_format.MessageToDict(config.config, preserving_proto_field_name=True)


def _infer_rows(client, module, rows: int) -> np.ndarray:
    a = np.arange(rows * 16, dtype=np.int32).reshape(rows, 16)
    inputs = [module.InferInput(n, [rows, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    return client.infer("simple", inputs).as_numpy("OUTPUT0")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_override_applies_to_that_load_and_the_next_plain_load_restores_the_file(served, protocol):
    client = _client(served, protocol)
    module = httpclient if protocol == "http" else grpcclient
    client.load_model("simple", config='{"max_batch_size":"16"}')  # (the example's quoted integer)
    assert int(_config(client, protocol)["max_batch_size"]) == 16
    assert _infer_rows(client, module, 16).shape == (16, 16)  # more rows than config.toml allows
    client.load_model("simple")
    assert int(_config(client, protocol)["max_batch_size"]) == 8
    with pytest.raises(InferenceServerException, match="exceeds the model's max_batch_size 8"):
        _infer_rows(client, module, 16)


def test_tensors_batching_and_instances_map_onto_inferds_keys(served):
    client = served[2]
    override = {
        "name": "simple", "max_batch_size": 4,
        "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16], "format": "FORMAT_NONE"}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": ["16"], "label_filename": ""}],
        "dynamic_batching": {"max_queue_delay_microseconds": "2500", "preferred_batch_size": []},
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "parameters": {"mode": {"string_value": "fast"}},
        "model_transaction_policy": {"decoupled": False},
    }
    try:
        client.load_model("simple", config=json.dumps(override))
        config = client.get_model_config("simple").config
        assert config.max_batch_size == 4 and list(config.input[0].dims) == [16]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2500
        assert config.instance_group[0].count == 2 and config.parameters["mode"].string_value == "fast"
    finally:
        client.load_model("simple")


@pytest.mark.parametrize("config, reason", [
    ('"parameters": {"config": {{"max_batch_size": "16"}}}', "not valid JSON"),  # the example's bad one
    ("[1, 2]", "must be a JSON object"),
    ('{"max_batch_size": 8, "sequence_batching": {}}', "config key 'sequence_batching' is not supported"),
    ('{"max_batch_size": "many"}', "config key 'max_batch_size' has a value of the wrong shape"),
    ('{"max_batch_size": -1}', "config key 'max_batch_size' has a value of the wrong shape"),
    ('{"name": "other"}', "is not the model's"),
    ('{"input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]}]}', "give max_batch_size too"),
    ('{"max_batch_size": 2, "input": [{"name": "INPUT0", "data_type": "TYPE_X", "dims": [16]}]}', "unknown data_type"),
    ('{"max_batch_size": 2, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16], "is_shape_tensor": true}]}',
     "'is_shape_tensor' = true is not supported"),
    ('{"max_batch_size": 2, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16], "reshape": {"shape": [3]}}]}',
     "inputs[0].reshape: [3] holds 3 elements"),
    ('{"max_batch_size": 2, "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16], "optional": true}]}',
     "'optional' = true is not supported"),
    ('{"max_batch_size": 2, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16], "format": "NCHW"}]}',
     "inputs[0].format"),
    ('{"max_batch_size": 2, "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16], '
     '"label_filename": "../../etc/passwd"}]}', "label_filename can only be set in config.toml"),
    # the model's own config.toml (or model.py) read out as labels: only a file sent in the same
    # request may be named
    ('{"max_batch_size": 2, "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16], '
     '"label_filename": "config.toml"}]}', "label_filename can only be set in config.toml"),
    ('{"max_batch_size": 2, "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16], '
     '"label_filename": ["config.toml"]}]}', "label_filename can only be set in config.toml"),
    ('{"dynamic_batching": {"preferred_batch_size": [4, 8]}}', "no preferred sizes"),
    ('{"instance_group": [{"count": 1, "kind": "KIND_GPU", "gpus": [0, 1]}]}', "is not supported by inferd"),
    ('{"model_transaction_policy": {"decoupled": "yes"}}', "'model_transaction_policy' has a value of the wrong shape"),
    ('{"model_transaction_policy": {"decoupled": false, "x": 1}}', "'x' = 1 is not supported"),
])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_bad_override_is_refused_with_its_reason_and_changes_nothing(served, protocol, config, reason):
    client = _client(served, protocol)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("simple", config=config)
    assert "failed to load" in caught.value.message() and reason in caught.value.message(), caught.value.message()
    assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    assert int(_config(client, protocol)["max_batch_size"]) == 8 and client.is_model_ready("simple")


def test_an_override_that_contradicts_the_file_fails_the_load_and_keeps_what_serves(served):
    client = served[2]
    bad = {"max_batch_size": 8, "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}]}
    with pytest.raises(InferenceServerException, match="contradicts the model file"):
        client.load_model("simple", config=json.dumps(bad))
    assert client.is_model_ready("simple") and _infer_rows(client, grpcclient, 2).shape == (2, 16)
