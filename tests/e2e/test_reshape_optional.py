"""Triton's reshape and optional inputs (config.toml's `reshape` and `optional`), end to end:
ONNX models built here with the onnx helper API and Python models, served by the real daemon,
called over HTTP (tritonclient's HTTP client and aiohttp) and the Unix socket. Concurrent
requests that leave out an optional input and requests that send it, within one queue delay,
each get their own answer; what a config or a model gets wrong fails that model with the reason
while the rest serves."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import aiohttp
import make_models
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from onnx import TensorProto, helper, numpy_helper
from test_workers import metric

from inferd.client import Client, InferdClientError


def _save_onnx(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def _fp32(name: str, shape) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _transposer(path: Path) -> None:
    """Triton's case: a model of [-1, 2, 2] tensors. T is X transposed (so where each element
    lands shows the reshape's layout); S each row's sum, [-1] (served as dims [1], reshape [])."""
    nodes = [helper.make_node("Transpose", ["X"], ["T"], perm=[0, 2, 1]),
             helper.make_node("ReduceSum", ["X", "axes"], ["S"], keepdims=0)]
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    _save_onnx(helper.make_graph(nodes, "transposer", [_fp32("X", [None, 2, 2])],
                                 [_fp32("T", [None, 2, 2]), _fp32("S", [None])], [axes]), path)


def _adder(path: Path) -> None:
    """Y = A + B, where B is an input with a default (an initializer the graph lists as an
    input): 10 in every element when a request leaves it out."""
    default = numpy_helper.from_array(np.full((1, 4), 10, np.float32), "B")
    _save_onnx(helper.make_graph([helper.make_node("Add", ["A", "B"], ["Y"])], "adder",
                                 [_fp32("A", [None, 4]), _fp32("B", [None, 4])], [_fp32("Y", [None, 4])], [default]),
               path)


def _tensor(name: str, shape: list, **more) -> str:
    extra = "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in more.items())
    return f'[[{name}]]\nname = "{shape[0]}"\ndatatype = "FP32"\nshape = {shape[1]}\n{extra}'


TRANSPOSER_CONFIG = ("max_batch_size = 8\nmax_queue_delay_ms = 100\n"
                     + _tensor("inputs", ["X", [-1, 4]], reshape=[2, 2])
                     + _tensor("outputs", ["T", [-1, 4]], reshape=[2, 2])
                     + _tensor("outputs", ["S", [-1, 1]], reshape=[]))

ADDER_CONFIG = ("max_batch_size = 8\nmax_queue_delay_ms = 200\n"
                + _tensor("inputs", ["A", [-1, 4]]) + _tensor("inputs", ["B", [-1, 4]], optional=True))

# A Python model that sees its tensors as the reshape says, and an optional input absent.
SHAPED = '''
import numpy as np

class Model:
    def infer(self, inputs):
        x = inputs["x"]
        assert x.shape[1:] == (2, 3), x.shape  # the model's shape, not the clients' [-1, 6]
        if (x == 13).any():  # a model bug: y in the clients' shape, not the model's
            return {"y": x.reshape(len(x), 6), "seen": np.zeros((len(x), 2), np.float32)}
        scale = inputs["scale"] if "scale" in inputs else np.full((len(x), 1), 100, np.float32)
        return {"y": x * scale[:, :, None], "seen": np.array([[x.shape[1], "scale" in inputs]] * len(x), np.float32)}
'''
SHAPED_CONFIG = ("max_batch_size = 8\nmax_queue_delay_ms = 200\n"
                 + _tensor("inputs", ["x", [-1, 6]], reshape=[2, 3])
                 + _tensor("inputs", ["scale", [-1, 1]], optional=True)
                 + _tensor("outputs", ["y", [-1, 6]], reshape=[2, 3])
                 + _tensor("outputs", ["seen", [-1, 2]]))

# Two optional inputs of one shape: a request with only p and one with only q must not batch.
EITHER = '''
import numpy as np

class Model:
    def infer(self, inputs):
        rows = len(next(iter(inputs.values())))
        zero = np.zeros((rows, 1), np.float32)
        return {"r": inputs.get("p", zero) + 10 * inputs.get("q", zero)}
'''
EITHER_CONFIG = ("max_batch_size = 8\nmax_queue_delay_ms = 200\n" + _tensor("inputs", ["p", [-1, 1]], optional=True)
                 + _tensor("inputs", ["q", [-1, 1]], optional=True) + _tensor("outputs", ["r", [-1, 1]]))



class Offset(torch.nn.Module):
    """A TorchScript model whose second input may be left out: forward gets None for it."""

    def forward(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None):  # noqa: UP045 (TorchScript's spelling)
        return x + (offset if offset is not None else torch.full_like(x, 100.0))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reshape")
    _transposer(root / "transposer" / "1" / "model.onnx")
    (root / "transposer" / "config.toml").write_text(TRANSPOSER_CONFIG)
    # Not batching: the whole shape is reshaped, [4] as [2, 2] (a model of fixed [1, 2, 2] seen as [1, 4]).
    _transposer(root / "whole" / "1" / "model.onnx")
    (root / "whole" / "config.toml").write_text(
        "max_batch_size = 0\n" + _tensor("inputs", ["X", [1, 4]], reshape=[1, 2, 2])
        + _tensor("outputs", ["T", [1, 4]], reshape=[1, 2, 2]))
    _adder(root / "adder" / "1" / "model.onnx")
    (root / "adder" / "config.toml").write_text(ADDER_CONFIG)
    (root / "shaped" / "1").mkdir(parents=True)
    (root / "shaped" / "1" / "model.py").write_text(SHAPED)
    (root / "shaped" / "config.toml").write_text(SHAPED_CONFIG)
    (root / "either" / "1").mkdir(parents=True)
    (root / "either" / "1" / "model.py").write_text(EITHER)
    (root / "either" / "config.toml").write_text(EITHER_CONFIG)
    make_models.save_torchscript(Offset(), root / "offset" / "1" / "model.pt")
    (root / "offset" / "config.toml").write_text(_tensor("inputs", ["x", [-1, 2]]) + _tensor("inputs", ["offset", [-1, 2]], optional=True)
                                                 + _tensor("outputs", ["y", [-1, 2]]))
    # What fails: an optional input the graph needs; a reshape the file contradicts; one that
    # does not hold the shape's elements.
    _adder(root / "needs_a" / "1" / "model.onnx")
    (root / "needs_a" / "config.toml").write_text(
        _tensor("inputs", ["A", [-1, 4]], optional=True) + _tensor("inputs", ["B", [-1, 4]], optional=True))
    _transposer(root / "misfit" / "1" / "model.onnx")
    (root / "misfit" / "config.toml").write_text(
        _tensor("inputs", ["X", [-1, 4]], reshape=[4, 1]) + _tensor("outputs", ["T", [-1, 4]], reshape=[2, 2]))
    _transposer(root / "miscounted" / "1" / "model.onnx")
    (root / "miscounted" / "config.toml").write_text(_tensor("inputs", ["X", [-1, 4]], reshape=[2, 3]))
    return root


@pytest.fixture(scope="module")
def served(repo):
    with DaemonProcess(repo) as d:
        yield d


def test_clients_see_dims_and_the_config_shows_the_reshape(served):
    meta = served.http_json("/v2/models/transposer")
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("X", [-1, 4])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("T", [-1, 4]), ("S", [-1, 1])]
    config = served.http_json("/v2/models/transposer/config")
    assert config["input"][0]["dims"] == [4] and config["input"][0]["reshape"] == {"shape": [2, 2]}
    assert config["output"][1]["dims"] == [1] and config["output"][1]["reshape"] == {"shape": []}
    assert config["input"][0]["optional"] is False


def _transposed(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 2, 2).transpose(0, 2, 1).reshape(-1, 4)


def test_reshaped_onnx_model_answers_over_http(served):
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    try:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)  # [a, b, c, d] -> [a, c, b, d]
        tensor = httpclient.InferInput("X", [3, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("transposer", [tensor])
        np.testing.assert_array_equal(result.as_numpy("T"), [[0, 2, 1, 3], [4, 6, 5, 7], [8, 10, 9, 11]])
        np.testing.assert_array_equal(result.as_numpy("S"), [[6], [22], [38]])
        whole = httpclient.InferInput("X", [1, 4], "FP32")
        whole.set_data_from_numpy(x[:1])
        np.testing.assert_array_equal(client.infer("whole", [whole]).as_numpy("T"), [[0, 2, 1, 3]])
    finally:
        client.close()


async def _infer_json(session: aiohttp.ClientSession, url: str, inputs: dict) -> dict:
    body = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                       for n, a in inputs.items()]}
    async with session.post(url, json=body) as response:
        answer = await response.json()
        assert response.status == 200, answer
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in answer["outputs"]}


async def test_concurrent_reshaped_requests_batch_and_each_gets_its_rows(served):
    before = metric(served, "inferd_batch_size_count", model="transposer")
    xs = [np.arange(4 * rows, dtype=np.float32).reshape(rows, 4) + 100 * i for i, rows in enumerate([1, 2, 1, 3, 1])]
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(_infer_json(session, served.url + "/v2/models/transposer/infer", {"X": x})
                                         for x in xs))
    for x, got in zip(xs, answers):
        np.testing.assert_array_equal(got["T"], _transposed(x))
        np.testing.assert_array_equal(got["S"], x.sum(axis=1, keepdims=True))
    assert 1 <= metric(served, "inferd_batch_size_count", model="transposer") - before <= len(xs)


async def test_optional_input_left_out_and_sent_in_concurrent_requests(served):
    """Eight callers with B and eight without, all within the queue delay: the two kinds never
    share a batch (the model gets the inputs its batch's requests sent), and each caller's
    answer is its own A + B, or A + 10 (the graph's default for B)."""
    before = metric(served, "inferd_batch_size_count", model="adder")
    url = served.url + "/v2/models/adder/infer"
    cases = [{"A": np.full((1, 4), i, np.float32)} | ({"B": np.full((1, 4), i * 1000, np.float32)} if i % 2 else {})
             for i in range(16)]
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(_infer_json(session, url, case) for case in cases))
    for case, got in zip(cases, answers):
        np.testing.assert_array_equal(got["Y"], case["A"] + case.get("B", 10))
    assert metric(served, "inferd_batch_size_count", model="adder") - before >= 2
    assert served.http_json("/v2/models/adder/config")["input"][1]["optional"] is True
    assert [t["name"] for t in served.http_json("/v2/models/adder")["inputs"]] == ["A", "B"]


async def test_python_model_sees_the_reshape_and_an_absent_optional_input(served):
    url = served.url + "/v2/models/shaped/infer"
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    scale = np.array([[2], [3]], np.float32)
    async with aiohttp.ClientSession() as session:
        sent, left_out = await asyncio.gather(_infer_json(session, url, {"x": x, "scale": scale}),
                                              _infer_json(session, url, {"x": x}))
    np.testing.assert_array_equal(sent["y"], x * scale)
    np.testing.assert_array_equal(sent["seen"], [[2, 1], [2, 1]])
    np.testing.assert_array_equal(left_out["y"], x * 100)
    np.testing.assert_array_equal(left_out["seen"], [[2, 0], [2, 0]])


async def test_requests_with_different_optional_inputs_of_one_shape_batch_apart(served):
    url = served.url + "/v2/models/either/infer"
    cases = [{"p" if i % 2 else "q": np.full((1, 1), i, np.float32)} for i in range(8)] + [
        {"p": np.ones((1, 1), np.float32), "q": np.ones((1, 1), np.float32)}]
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(_infer_json(session, url, case) for case in cases))
    for case, got in zip(cases, answers):
        np.testing.assert_array_equal(got["r"], case.get("p", 0) + 10 * case.get("q", 0))


def test_torchscript_model_gets_none_for_an_input_left_out(served):
    x = np.array([[1, 2]], np.float32)
    with Client(socket=served.socket_path) as c:
        np.testing.assert_array_equal(c.infer("offset", {"x": x})["y"], [[101, 102]])
        np.testing.assert_array_equal(c.infer("offset", {"x": x, "offset": -x})["y"], [[0, 0]])


async def test_a_model_answering_in_the_clients_shape_fails_that_request_only(served):
    url = served.url + "/v2/models/shaped/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 6], "data": [13, 0, 0, 0, 0, 0]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as response:
            assert response.status == 500
            assert "output 'y' has shape [1, 6], declared [-1, 2, 3]" in (await response.json())["error"]
        x = np.ones((1, 6), np.float32)
        np.testing.assert_array_equal((await _infer_json(session, url, {"x": x}))["y"], x * 100)


def test_a_required_input_left_out_is_refused_and_the_model_serves_on(served):
    with Client(socket=served.socket_path) as c:
        with pytest.raises(InferdClientError) as e:
            c.infer("adder", {"B": np.zeros((1, 4), np.float32)})
        assert e.value.code == "invalid_argument" and "missing input 'A'" in str(e.value)
        with pytest.raises(InferdClientError) as e:
            c.infer("adder", {})
        assert e.value.code == "invalid_argument"
        with pytest.raises(InferdClientError) as e:  # the clients' shape, not the model's
            c.infer("transposer", {"X": np.zeros((1, 2, 2), np.float32)})
        assert e.value.code == "invalid_argument" and "[-1, 4]" in str(e.value)
        np.testing.assert_array_equal(c.infer("adder", {"A": np.ones((1, 4), np.float32)})["Y"], [[11] * 4])


def test_bad_reshape_or_optional_fails_that_model_with_the_reason(served):
    with Client(socket=served.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
        assert index["needs_a"]["state"] == "FAILED"
        assert "'A' optional, but the ONNX graph needs it" in index["needs_a"]["reason"]
        assert index["misfit"]["state"] == "FAILED"
        assert "reshapes input 'X' to [-1, 4, 1]" in index["misfit"]["reason"]
        assert index["miscounted"]["state"] == "FAILED"
        assert "inputs[0].reshape" in index["miscounted"]["reason"] and "holds 6 elements" in index["miscounted"]["reason"]
        assert c.ready("transposer") and c.ready("adder")
