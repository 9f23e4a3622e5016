"""Streams through real clients: tritonclient.grpc's ModelStreamInfer with a decoupled model
(Triton's repeat_int32, as its simple_grpc_custom_repeat.py example uses it) and an ordinary
one; HTTP generate and generate_stream (server-sent events); the Unix socket's streams."""

from __future__ import annotations

import asyncio
import json
import queue

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from stream_models import stream_models
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with DaemonProcess(stream_models(tmp_path_factory.mktemp("models"))) as d:
        yield d


@pytest.fixture(scope="module")
def grpc_address(daemon) -> str:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


def repeat_inputs(values, delay_ms=0, wait_ms=0):
    values = np.asarray(values, np.int32)
    tensors = []
    for name, array in (("IN", values), ("DELAY", np.full(len(values), delay_ms, np.uint32)),
                        ("WAIT", np.array([wait_ms], np.uint32))):
        tensor = grpcclient.InferInput(name, list(array.shape), "INT32" if name == "IN" else "UINT32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def x_input(value: int, shape=(1,)):
    tensor = grpcclient.InferInput("x", list(shape), "INT64")
    tensor.set_data_from_numpy(np.full(shape, value, np.int64))
    return tensor


class Stream:
    """tritonclient's stream, its callback's results in a queue."""

    def __init__(self, address: str):
        self.client = grpcclient.InferenceServerClient(address)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put(error or result))

    def take(self, n: int, timeout: float = 30) -> list:
        return [self.results.get(timeout=timeout) for _ in range(n)]

    def nothing_more(self, wait: float = 0.5) -> bool:
        try:
            self.results.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self):
        self.client.stop_stream()
        self.client.close()


@pytest.fixture
def stream(grpc_address):
    s = Stream(grpc_address)
    yield s
    s.close()


def final_flag(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def test_custom_repeat_example_gets_each_element_as_one_response(stream):
    """simple_grpc_custom_repeat.py's use: 10 responses, in order, then nothing."""
    stream.client.async_stream_infer("repeat_int32", repeat_inputs(range(100, 110), delay_ms=5),
                                     outputs=[grpcclient.InferRequestedOutput("OUT")], request_id="r1")
    results = stream.take(10)
    assert [int(r.as_numpy("OUT")[0]) for r in results] == list(range(100, 110))
    assert all(r.get_response().id == "r1" and not final_flag(r) for r in results)
    assert results[0].as_numpy("IDX") is None  # only the output asked for
    assert stream.nothing_more()


def test_an_empty_final_response_when_asked(stream):
    stream.client.async_stream_infer("repeat_int32", repeat_inputs([7, 8]), request_id="f",
                                     enable_empty_final_response=True)
    results = stream.take(3)
    assert [final_flag(r) for r in results] == [False, False, True]
    assert [int(r.as_numpy("OUT")[0]) for r in results[:2]] == [7, 8]
    assert results[2].get_response().id == "f" and not results[2].get_response().outputs
    # Zero responses: the final marker alone.
    stream.client.async_stream_infer("repeat_int32", repeat_inputs([]), request_id="none",
                                     enable_empty_final_response=True)
    [only] = stream.take(1)
    assert final_flag(only) and only.get_response().id == "none"


def test_an_ordinary_model_answers_once_on_a_stream(stream):
    stream.client.async_stream_infer("double", [x_input(21, (3,))], request_id="d")
    [result] = stream.take(1)
    assert result.as_numpy("y").tolist() == [42, 42, 42] and final_flag(result)
    assert result.get_response().id == "d"
    assert stream.nothing_more()


def test_concurrent_requests_on_one_stream_are_each_answered_with_their_id(stream):
    for i in range(6):
        stream.client.async_stream_infer("repeat_int32", repeat_inputs([i, i], delay_ms=20), request_id=f"c{i}")
        stream.client.async_stream_infer("double", [x_input(i)], request_id=f"d{i}")
    results = stream.take(18)
    by_id: dict[str, list] = {}
    for r in results:
        by_id.setdefault(r.get_response().id, []).append(r)
    assert sorted(by_id) == sorted([f"c{i}" for i in range(6)] + [f"d{i}" for i in range(6)])
    for i in range(6):
        assert [int(r.as_numpy("OUT")[0]) for r in by_id[f"c{i}"]] == [i, i]
        assert int(by_id[f"d{i}"][0].as_numpy("y")[0]) == 2 * i


def test_a_request_error_is_in_its_response_and_the_stream_goes_on(stream):
    stream.client.async_stream_infer("no_such_model", [x_input(1)], request_id="bad")
    stream.client.async_stream_infer("double", [x_input(1, (1, 2))], request_id="badshape")
    stream.client.async_stream_infer("double", [x_input(5)], request_id="good")
    first, second, third = stream.take(3)
    assert isinstance(first, InferenceServerException) and "no_such_model" in first.message()
    assert isinstance(second, InferenceServerException) and "shape" in second.message()
    assert int(third.as_numpy("y")[0]) == 10


def test_model_infer_refuses_a_decoupled_model_and_its_config_says_decoupled(grpc_address):
    client = grpcclient.InferenceServerClient(grpc_address)
    with pytest.raises(InferenceServerException, match="decoupled") as e:
        client.infer("repeat_int32", repeat_inputs([1]))
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    config = client.get_model_config("repeat_int32", as_json=True)["config"]
    assert config["model_transaction_policy"] == {"decoupled": True}
    assert client.get_model_config("double", as_json=True)["config"]["model_transaction_policy"].get("decoupled", False) is False
    client.close()


def test_unix_socket_stream_yields_each_response(daemon):
    from inferd.client import Client, InferdClientError

    with Client(socket=daemon.socket_path) as client:
        inputs = {"IN": np.array([3, 4, 5], np.int32), "DELAY": np.zeros(3, np.uint32), "WAIT": np.zeros(1, np.uint32)}
        got = list(client.stream("repeat_int32", inputs, outputs=["OUT"]))
        assert [r["OUT"].tolist() for r in got] == [[3], [4], [5]] and all(list(r) == ["OUT"] for r in got)
        assert list(client.stream("repeat_int32", inputs | {"IN": np.zeros(0, np.int32)})) == []
        # An ordinary model answers once; the connection serves on after streams.
        assert [r["y"].tolist() for r in client.stream("double", {"x": np.array([1, 2])})] == [[2, 4]]
        with pytest.raises(InferdClientError, match="decoupled") as e:
            client.infer("repeat_int32", inputs)
        assert e.value.code == "invalid_argument"
        with pytest.raises(InferdClientError) as e:
            list(client.stream("careless", {"x": np.array([1])}))
        assert e.value.code == "internal" and "ValueError: midway" in e.value.message
        assert client.infer("double", {"x": np.array([4])})["y"].tolist() == [8]
        assert client.connections_opened == 1


async def test_unix_socket_async_streams_share_the_connection(daemon):
    from inferd.client import AsyncClient, InferdClientError

    async def repeat(client, values):
        ins = {"IN": np.array(values, np.int32), "DELAY": np.full(len(values), 5, np.uint32), "WAIT": np.zeros(1, np.uint32)}
        return [int(r["OUT"][0]) async for r in client.stream("repeat_int32", ins)]

    async with AsyncClient(socket=daemon.socket_path) as client:
        results = await asyncio.gather(repeat(client, [1, 2, 3]), repeat(client, [4, 5]), repeat(client, []),
                                       client.infer("double", {"x": np.array([6])}))
        assert results[:3] == [[1, 2, 3], [4, 5], []] and results[3]["y"].tolist() == [12]
        with pytest.raises(InferdClientError, match="midway"):
            [r async for r in client.stream("careless", {"x": np.array([1])})]
        assert client.connections_opened == 1


async def _sse(session, url: str, doc: dict) -> tuple[int, str, list]:
    async with session.post(url, json=doc) as r:
        if r.content_type != "text/event-stream":
            return r.status, r.content_type, [await r.json()]
        events = []
        async for line in r.content:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
        return r.status, r.content_type, events


async def test_http_generate_stream_sends_each_response_as_an_event(daemon):
    async with aiohttp.ClientSession() as session:
        url = f"{daemon.url}/v2/models/repeat_int32/generate_stream"
        status, kind, events = await _sse(session, url, {"IN": [4, 5, 6], "DELAY": [1, 1, 1], "WAIT": 0})
        assert (status, kind) == (200, "text/event-stream")
        assert events == [{"model_name": "repeat_int32", "model_version": "1", "OUT": v, "IDX": i}
                          for i, v in enumerate([4, 5, 6])]
        # An ordinary model: one event; the versioned URL too.
        status, _, events = await _sse(session, f"{daemon.url}/v2/models/double/versions/1/generate_stream", {"x": [1, 2]})
        assert status == 200 and events == [{"model_name": "double", "model_version": "1", "y": [2, 4]}]
        # An error after the first event is an event; one before it, an ordinary answer.
        status, _, events = await _sse(session, f"{daemon.url}/v2/models/careless/generate_stream", {"x": 1})
        assert status == 200 and [e.get("y") for e in events[:2]] == [1, 2] and "ValueError: midway" in events[2]["error"]
        status, kind, [error] = await _sse(session, f"{daemon.url}/v2/models/careless/generate_stream", {"x": 3})
        assert (status, kind) == (500, "application/json") and "generator" in error["error"]


async def test_http_generate_answers_one_response(daemon):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{daemon.url}/v2/models/double/generate", json={"x": 21, "parameters": {"t": 1}}) as r:
            assert r.status == 200 and await r.json() == {"model_name": "double", "model_version": "1", "y": 42}
        async with session.post(f"{daemon.url}/v2/models/repeat_int32/generate", json={"IN": [9], "DELAY": [0], "WAIT": 0}) as r:
            assert r.status == 200 and (await r.json())["OUT"] == 9
        async with session.post(f"{daemon.url}/v2/models/repeat_int32/generate", json={"IN": [1, 2], "DELAY": [0, 0], "WAIT": 0}) as r:
            assert r.status == 400 and "exactly one" in (await r.json())["error"]
        async with session.post(f"{daemon.url}/v2/models/double/generate", json={"x": 1, "text_input": "hi"}) as r:
            assert r.status == 400 and "'text_input' is not an input of model 'double' (its inputs: 'x')" in (await r.json())["error"]
        async with session.post(f"{daemon.url}/v2/models/nope/generate", json={"x": 1}) as r:
            assert r.status == 404
        async with session.post(f"{daemon.url}/v2/models/double/generate", data=b"[1]") as r:
            assert r.status == 400


async def test_tritonclient_aio_stream_infer(grpc_address):
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(grpc_address)
    done = asyncio.Event()

    async def requests():
        yield {"model_name": "repeat_int32", "inputs": repeat_inputs([1, 2, 3]), "request_id": "a"}
        yield {"model_name": "double", "inputs": [x_input(4)], "request_id": "b"}
        await done.wait()  # the stream stays open until every answer is in

    got = []
    responses = client.stream_infer(requests())
    async for result, error in responses:
        assert error is None
        got.append((result.get_response().id, result.as_numpy("OUT" if result.get_response().id == "a" else "y").tolist()))
        if len(got) == 4:
            done.set()
            break
    responses.cancel()
    await client.close()
    assert sorted(got) == [("a", [1]), ("a", [2]), ("a", [3]), ("b", [8])]
