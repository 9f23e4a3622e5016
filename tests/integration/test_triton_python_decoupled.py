"""Decoupled Triton Python models in-process: responses through the request's sender (from
execute, its threads, its asyncio tasks) until the final flag, cancellation, a closed sender,
error responses, the request's parameters."""

from __future__ import annotations

import numpy as np
import pytest
from triton_python_backends import backend, write_model
from triton_python_layout import lay_out

from inferd.backends.python import ModelCodeError


def test_square_decoupled_responses_until_final(tmp_path):
    root = lay_out(["decoupled"], tmp_path / "models")
    b = backend(root, "square_int32")
    assert b.load().decoupled and b.decoupled
    responses = list(b.responses({"IN": np.array([3], np.int32)}, ["OUT"]))
    assert [r["OUT"].tolist() for r in responses] == [[3], [3], [3]]
    assert list(b.responses({"IN": np.array([0], np.int32)}, ["OUT"])) == []
    b.unload()


def test_repeat_sends_from_its_own_thread_after_execute_returned(tmp_path):
    """WAIT (1 ms) is shorter than the delays: execute returns before its thread has sent."""
    root = lay_out(["decoupled"], tmp_path / "models")
    b = backend(root, "repeat_int32")
    b.load()
    inputs = {"IN": np.array([4, 2, 0, 1], np.int32), "DELAY": np.array([5, 5, 5, 5], np.uint32),
              "WAIT": np.array([1], np.uint32)}
    responses = list(b.responses(inputs, ["OUT", "IDX"]))
    assert [(r["OUT"].tolist(), r["IDX"].tolist()) for r in responses] == [([4], [0]), ([2], [1]), ([0], [2]), ([1], [3])]
    b.unload()


DECOUPLED_CANCEL = """
import threading

class TritonPythonModel:
    seen = {}

    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_model_transaction_policy({"decoupled": True})
        return config

    def execute(self, requests):
        request = requests[0]
        sender = request.get_response_sender()
        TritonPythonModel.seen["request"] = request
        for i in range(3):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([i], np.int32))]))
        if request.inputs()[0].as_numpy()[0] == 1:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("stream broke")))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        try:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except pb_utils.TritonModelException as e:
            TritonPythonModel.seen["closed"] = str(e)
        return None
"""


def test_a_closed_stream_cancels_the_request_and_a_closed_sender_refuses(tmp_path):
    b = backend(write_model(tmp_path / "models", "m", DECOUPLED_CANCEL), "m")
    b.load()
    model = b.triton.cls
    stream = b.responses({"X": np.array([0], np.int32)}, ["Y"])
    assert next(stream)["Y"].tolist() == [0]
    assert "Response sender has been closed" in model.seen["closed"]
    assert not model.seen["request"].is_cancelled()
    stream.close()  # the caller went away
    assert model.seen["request"].is_cancelled()


def test_an_error_response_ends_a_stream_with_its_message(tmp_path):
    b = backend(write_model(tmp_path / "models", "m", DECOUPLED_CANCEL), "m")
    b.load()
    stream = b.responses({"X": np.array([1], np.int32)}, ["Y"])
    assert [next(stream)["Y"].tolist() for _ in range(3)] == [[0], [1], [2]]
    with pytest.raises(ModelCodeError, match="^stream broke$"):
        next(stream)


def test_a_decoupled_request_sees_its_parameters(tmp_path):
    """The worker passes a per-request model's decoupled request its parameters."""
    body = DECOUPLED_CANCEL.replace("for i in range(3):", "for i in range(json.loads(request.parameters()).get('n', 3)):")
    b = backend(write_model(tmp_path / "models", "m", body), "m")
    b.load()
    assert len(list(b.responses({"X": np.array([0], np.int32)}, ["Y"], parameters={"n": 5}))) == 5
    assert len(list(b.responses({"X": np.array([0], np.int32)}, ["Y"]))) == 3


ASYNC_DECOUPLED = """
import asyncio

class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_model_transaction_policy({"decoupled": True})
        return config

    async def execute(self, requests):
        sender = requests[0].get_response_sender()
        x = requests[0].inputs()[0].as_numpy()
        if x[0] == 1:
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]))
            raise pb_utils.TritonModelException("failed after one response")

        async def later():  # runs on after execute returned
            await asyncio.sleep(0)
            final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]), flags=final)

        self.task = asyncio.get_running_loop().create_task(later())
        return None
"""


def test_an_async_models_tasks_run_on_after_execute_returned(tmp_path):
    b = backend(write_model(tmp_path / "models", "m", ASYNC_DECOUPLED), "m")
    b.load()
    assert [r["Y"].tolist() for r in b.responses({"X": np.array([5], np.int32)}, ["Y"])] == [[6]]
    b.unload()


def test_what_a_decoupled_model_sent_before_execute_raised_still_goes_out(tmp_path):
    b = backend(write_model(tmp_path / "models", "m", ASYNC_DECOUPLED), "m")
    b.load()
    stream = b.responses({"X": np.array([1], np.int32)}, ["Y"])
    assert next(stream)["Y"].tolist() == [1]
    with pytest.raises(ModelCodeError, match="failed after one response"):
        next(stream)
    b.unload()
