"""`decoupled = true` in a model's config.toml (Triton users set it in the model's
configuration, not in code), and the same through a load request's Triton override
(`model_transaction_policy.decoupled`), through tritonclient's gRPC stream: a Python model
whose infer yields, without the class attribute, answers 0..N responses per request."""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from stream_models import REPEAT, place
from tritonclient.utils import InferenceServerException

UNSAID = REPEAT.replace("    decoupled = True\n", "")  # the same generator, no class attribute


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    place(root, "configured", UNSAID, "decoupled = true\n")
    place(root, "overridden", UNSAID)  # fails as an ordinary model until a load says otherwise
    with DaemonProcess(root) as d:
        [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
        c = grpcclient.InferenceServerClient(event["address"])
        yield c
        c.close()


def _inputs(values):
    tensors = []
    for name, array in (("IN", np.asarray(values, np.int32)), ("DELAY", np.zeros(len(values), np.uint32)),
                        ("WAIT", np.zeros(1, np.uint32))):
        tensor = grpcclient.InferInput(name, list(array.shape), "INT32" if name == "IN" else "UINT32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _stream(client, model: str, values) -> list[int]:
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error or result))
    try:
        client.async_stream_infer(model, _inputs(values), enable_empty_final_response=True)
        outs = []
        while True:
            result = results.get(timeout=30)
            if isinstance(result, Exception):
                raise result
            response = result.get_response()
            if response.outputs:
                outs.append(int(result.as_numpy("OUT")[0]))
            if response.parameters["triton_final_response"].bool_param:
                return outs
    finally:
        client.stop_stream()


def test_config_toml_makes_a_python_model_decoupled(client):
    assert _stream(client, "configured", [4, 5, 6]) == [4, 5, 6]
    assert client.get_model_config("configured", as_json=True)["config"]["model_transaction_policy"] == {"decoupled": True}
    with pytest.raises(InferenceServerException, match="decoupled") as refused:
        client.infer("configured", _inputs([1]))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_triton_override_maps_decoupled_onto_the_config_key(client):
    assert not client.is_model_ready("overridden")  # its files alone: a generator where a dict is due
    client.load_model("overridden", config=json.dumps({"model_transaction_policy": {"decoupled": True}}))
    assert _stream(client, "overridden", [7, 8]) == [7, 8]
    assert client.get_model_config("overridden", as_json=True)["config"]["model_transaction_policy"] == {"decoupled": True}
    with pytest.raises(InferenceServerException, match="infer\\(\\) must return a dict of outputs, got generator"):
        client.load_model("overridden")  # without the override: as its files say
