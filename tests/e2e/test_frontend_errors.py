"""A bug anywhere behind a front-end (an exception that is not an InferdError) ends the same way
on all three: INTERNAL (HTTP 500, gRPC INTERNAL, the socket's `internal`) with a short message
that carries none of the exception's text, its traceback once in the log, and the front-end
serving on. The daemon's own listeners and front-ends on real sockets, real clients; behind
them a data plane whose every call hits a bug (tests/buggy_frontends.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from daemon_process import DaemonProcess
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from tritonclient.grpc import service_pb2 as pb
from waiting import eventually

from inferd.client import AsyncClient, InferdClientError

MESSAGE = "internal error (ZeroDivisionError); the server's log has the details"
BUGGY = Path(__file__).resolve().parents[1] / "buggy_frontends.py"
SECRET = "/etc/inferd/secret-path"  # every bug's text: in the log, never to a caller


@pytest.fixture(scope="module")
def buggy(tmp_path_factory):
    with DaemonProcess(tmp_path_factory.mktemp("none"), program=[sys.executable, str(BUGGY)],
                       env={"BUGGY_SECRET": SECRET}) as d:
        yield d


def logged_bugs(d: DaemonProcess) -> list[dict]:
    """The log's error events that carry a traceback."""
    return [e for e in d.log_events() if e.get("level") == "error" and "Traceback" in e.get("exception", "")]


async def one_more_logged_bug(d: DaemonProcess, before: int) -> None:
    await eventually(lambda: len(logged_bugs(d)) >= before + 1, 10, "the bug in the log")
    assert len(logged_bugs(d)) == before + 1  # once
    assert SECRET in logged_bugs(d)[-1]["error"]


async def test_http(buggy):
    infer = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]}
    async with aiohttp.ClientSession(buggy.url) as s:
        for method, path, body in [("GET", "/v2/models/m", None), ("POST", "/v2/models/m/infer", infer),
                                   ("POST", "/v2/repository/index", None), ("GET", "/v2/models/m/config", None)]:
            before = len(logged_bugs(buggy))
            async with s.request(method, path, json=body) as r:
                assert (r.status, await r.json()) == (500, {"error": MESSAGE}), path
            await one_more_logged_bug(buggy, before)
        async with s.get("/v2/health/live") as r:
            assert r.status == 200  # serving on


async def test_grpc(buggy):
    [address] = [e["address"] for e in buggy.events("listening") if e["frontend"] == "grpc"]
    host, port = address.rsplit(":", 1)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[1])
    tensor.contents.int_contents.append(1)
    calls = [("ModelMetadata", pb.ModelMetadataRequest(name="m"), pb.ModelMetadataResponse),
             ("ModelInfer", pb.ModelInferRequest(model_name="m", inputs=[tensor]), pb.ModelInferResponse),
             ("RepositoryIndex", pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse)]
    async with Channel(host, int(port)) as channel:
        for name, message, reply in calls:
            method = UnaryUnaryMethod(channel, f"/inference.GRPCInferenceService/{name}", type(message), reply)
            before = len(logged_bugs(buggy))
            with pytest.raises(GRPCError) as e:
                await method(message)
            assert (e.value.status, e.value.message) == (Status.INTERNAL, MESSAGE), name
            await one_more_logged_bug(buggy, before)
        live = UnaryUnaryMethod(channel, "/inference.GRPCInferenceService/ServerLive", pb.ServerLiveRequest,
                                pb.ServerLiveResponse)
        assert (await live(pb.ServerLiveRequest())).live  # serving on


async def test_unix_socket(buggy):
    async with AsyncClient(socket=buggy.socket_path) as client:
        for call in (lambda: client.model_metadata("m"), lambda: client.infer("m", {"x": np.ones(1, np.int32)}),
                     client.models):
            before = len(logged_bugs(buggy))
            with pytest.raises(InferdClientError) as e:
                await call()
            assert (e.value.code, e.value.message) == ("internal", MESSAGE)
            await one_more_logged_bug(buggy, before)
        assert await client.live()  # the same connection, serving on
        assert client.connections_opened == 1
