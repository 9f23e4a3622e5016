"""Broken Triton Python models (TritonPythonModel, triton_python_backend_utils) against the real
daemon: an execute that raises, returns the wrong number of responses, an output of the wrong
datatype or none, error responses (TritonError), an initialize that raises. Each request gets a
clear error with its protocol's status; the daemon, and the model, serve on."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import textwrap
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException

HEADER = "import numpy as np\nimport triton_python_backend_utils as pb_utils\n"

# X (INT32 [1]) == 0 (the warm-up's zeros too): Y = X + 1; every other value is a way to fail.
MOODY = '''
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        return config

    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
        good = pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)])
        v = int(x[0])
        if v == 1:
            raise pb_utils.TritonModelException("moody refuses 1")
        if v == 2:
            return [good, good]
        if v == 3:
            return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x.astype(np.float64))])]
        if v == 4:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError("four is not allowed", pb_utils.TritonError.INVALID_ARG))]
        if v == 5:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError("five failed"))]
        if v == 6:
            return [pb_utils.InferenceResponse([])]
        return [good]
'''

BAD_INIT = '''
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        return config

    def initialize(self, args):
        raise pb_utils.TritonModelException("cannot find my weights")

    def execute(self, requests):
        return []
'''

# Answers nothing, not even a final flag, to X == 1; with a list (not None) to X == 2.
BAD_DECOUPLED = '''
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_model_transaction_policy({"decoupled": True})
        return config

    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
        sender = requests[0].get_response_sender()
        if x[0] == 3:
            raise pb_utils.TritonModelException("decoupled execute failed")
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        if x[0] == 2:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("second response failed")))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

# X == 1: execute returns having sent nothing, and nothing ever comes (no final flag).
SILENT_DECOUPLED = BAD_DECOUPLED.replace("        sender = requests[0].get_response_sender()\n",
                                         "        sender = requests[0].get_response_sender()\n"
                                         "        if x[0] == 1:\n            return None\n")


# Batches up to 8 callers; answers X == 4 with an error response (INVALID_ARG), the rest Y = X + 1.
PICKY = """
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_max_batch_size(8)
        config.set_dynamic_batching()
        return config

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if (x == 4).any():
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("no fours", pb_utils.TritonError.INVALID_ARG)))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        return out
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    models = (("moody", MOODY), ("bad_init", BAD_INIT), ("bad_decoupled", BAD_DECOUPLED),
              ("silent_decoupled", SILENT_DECOUPLED), ("picky", PICKY))
    for name, body in models:
        version = root / name / "1"
        version.mkdir(parents=True)
        (version / "model.py").write_text(HEADER + textwrap.dedent(body))
    (root / "silent_decoupled" / "config.toml").write_text("execution_timeout_s = 1\n")
    (root / "picky" / "config.toml").write_text("max_queue_delay_ms = 20\n")  # (room for callers to share a batch)
    subprocess.run(["chmod", "-R", "go-w", str(root)], check=True)
    with DaemonProcess(root) as d:
        yield d


def infer(d: DaemonProcess, model: str, x: int) -> tuple[int, dict]:
    return d.post_json(f"/v2/models/{model}/infer", {"inputs": [{"name": "X", "datatype": "INT32", "shape": [1], "data": [x]}]})


@pytest.mark.parametrize(("x", "status", "words"), [
    (1, 500, "execute() raised TritonModelException: moody refuses 1"),
    (2, 500, "got 2 responses for 1 requests"),
    (3, 500, "output 'Y' is float64, the configuration says TYPE_INT32"),
    (4, 400, "four is not allowed"),
    (5, 500, "five failed"),
    (6, 500, "the response has no output 'Y'"),
])
def test_a_broken_answer_fails_its_request_and_the_model_serves_on(daemon, x, status, words):
    got, body = infer(daemon, "moody", x)
    assert got == status and words in body["error"], body
    got, body = infer(daemon, "moody", 41)
    assert got == 200 and body["outputs"][0]["data"] == [42], body


def test_an_error_response_is_invalid_argument_over_grpc_when_the_model_says_so(daemon):
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    with grpcclient.InferenceServerClient(event["address"]) as client:
        x = grpcclient.InferInput("X", [1], "INT32")
        x.set_data_from_numpy(np.array([4], np.int32))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("moody", [x])
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT" and "four is not allowed" in raised.value.message()
        x.set_data_from_numpy(np.array([5], np.int32))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("moody", [x])
        assert raised.value.status() == "StatusCode.INTERNAL" and "five failed" in raised.value.message()


def test_an_initialize_that_raises_fails_the_load_with_its_reason(daemon):
    row = _index_row(daemon, "bad_init")
    assert row["state"] == "FAILED", row
    assert "initialize() raised TritonModelException: cannot find my weights" in row["reason"], row
    got, body = infer(daemon, "bad_init", 0)
    assert got == 503 and "cannot find my weights" in body["error"], body
    assert infer(daemon, "moody", 0)[0] == 200


def _index_row(d: DaemonProcess, name: str) -> dict:
    request = urllib.request.Request(f"{d.url}/v2/repository/index", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        rows = json.loads(response.read())
    [row] = [r for r in rows if r["name"] == name]
    return row


def _stream(d: DaemonProcess, x: int, model: str = "bad_decoupled") -> list:
    """Every result and error of one streamed request to `model`, until its last."""
    import queue

    results: queue.Queue = queue.Queue()
    [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
    with grpcclient.InferenceServerClient(event["address"]) as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        i = grpcclient.InferInput("X", [1], "INT32")
        i.set_data_from_numpy(np.array([x], np.int32))
        client.async_stream_infer(model, [i], enable_empty_final_response=True)
        got = []
        while True:
            item = results.get(timeout=60)
            got.append(item)
            if isinstance(item, InferenceServerException):
                break
            if item.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
    return got


def test_a_decoupled_models_error_ends_its_stream_and_the_model_serves_on(daemon):
    first, error = _stream(daemon, 2)
    assert first.as_numpy("Y").tolist() == [3]
    assert isinstance(error, InferenceServerException) and "second response failed" in error.message()
    [error] = _stream(daemon, 3)
    assert "decoupled execute failed" in error.message()
    got = _stream(daemon, 0)
    assert got[0].as_numpy("Y").tolist() == [1]


def test_a_stream_the_model_never_ends_fails_at_the_execution_timeout(daemon):
    """silent_decoupled never answers X == 1: its execution_timeout_s (1 s) ends the request
    with an error; the model's next request is served by a new worker."""
    [error] = _stream(daemon, 1, "silent_decoupled")
    assert isinstance(error, InferenceServerException) and "execution_timeout_s" in error.message(), error
    got = _stream(daemon, 0, "silent_decoupled")
    assert got[0].as_numpy("Y").tolist() == [1]


@pytest.mark.skipif(importlib.util.find_spec("inferd.backends.per_request") is None,
                    reason="the worker answers a batch as one caller (inferd.backends.per_request not in yet)")
def test_callers_sharing_a_batch_each_get_their_own_answer_or_error(daemon):
    """16 concurrent callers of a batching model, every fourth sending 4: those get 400 with the
    model's message, the others their own Y, however the daemon batched them."""
    from concurrent.futures import ThreadPoolExecutor

    def call(i: int):
        x = 4 if i % 4 == 0 else i + 10
        body = {"inputs": [{"name": "X", "datatype": "INT32", "shape": [1, 1], "data": [x]}]}
        request = urllib.request.Request(f"{daemon.url}/v2/models/picky/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return x, response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return x, e.code, json.loads(e.read())

    with ThreadPoolExecutor(16) as pool:
        for x, status, body in pool.map(call, range(16)):
            if x == 4:
                assert status == 400 and body["error"] == "no fours", body
            else:
                assert status == 200 and body["outputs"][0]["data"] == [x + 1], body
