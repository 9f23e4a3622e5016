"""A bug anywhere behind a front-end (an exception that is not an InferdError) ends the same way
on all three: INTERNAL (HTTP 500, gRPC INTERNAL, the socket's `internal`) with a short message
that carries none of the exception's text, its traceback once in the log, and the front-end
serving on. Real servers on real sockets, real clients; the data plane is a small class whose
calls all hit a bug."""

from __future__ import annotations

import socket

import aiohttp
import numpy as np
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from inferd.client import AsyncClient, InferdClientError
from inferd.daemon.dataplane import DataPlane, ServerState
from inferd.daemon.frontends.auth import Access
from inferd.daemon.frontends.grpc import InferenceServicer
from inferd.daemon.frontends.grpc_gen import inference_pb2 as pb
from inferd.daemon.frontends.grpc_gen.inference_grpc import GRPCInferenceServiceStub
from inferd.daemon.frontends.http import build_app
from inferd.daemon.frontends.unix import UnixFrontEnd

SECRET = "/etc/inferd/secret-path"
MESSAGE = "internal error (ZeroDivisionError); the server's log has the details"


class BuggyDataPlane(DataPlane):
    """Every call the front-ends make hits a bug."""

    def __init__(self):
        state = ServerState()
        state.started = True
        super().__init__(repository=None, state=state)

    def _bug(self, *args, **kwargs):
        raise ZeroDivisionError(SECRET)

    model_metadata = model_config = model_statistics = submit = _bug

    async def infer(self, *args):
        self._bug()

    async def repository_index(self, ready_only: bool = False):
        self._bug()


def bug_events(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e.get("log_level") == "error" and "exc_info" in e]


@pytest.fixture
async def http_url():
    from aiohttp import web

    access = Access(None, True, Counter("refused", "", ["protocol"], registry=CollectorRegistry()))
    runner = web.AppRunner(build_app(BuggyDataPlane(), CollectorRegistry(), 1 << 20, access))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_http(http_url):
    infer = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]}
    calls = [("GET", "/v2/models/m", None), ("POST", "/v2/models/m/infer", infer), ("POST", "/v2/repository/index", None)]
    async with aiohttp.ClientSession(http_url) as s:
        for method, path, body in calls:
            with capture_logs() as logs:
                async with s.request(method, path, json=body) as r:
                    assert (r.status, await r.json()) == (500, {"error": MESSAGE}), path
            assert len(bug_events(logs)) == 1 and SECRET in bug_events(logs)[0]["error"]
        async with s.get("/v2/health/live") as r:
            assert r.status == 200  # serving on


async def test_grpc():
    from grpclib.server import Server

    server = Server([InferenceServicer(BuggyDataPlane())])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    await server.start(sock=listener)
    channel = Channel("127.0.0.1", listener.getsockname()[1])
    stub = GRPCInferenceServiceStub(channel)
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[1])
    tensor.contents.int_contents.append(1)
    calls = [(stub.ModelMetadata, pb.ModelMetadataRequest(name="m")),
             (stub.ModelInfer, pb.ModelInferRequest(model_name="m", inputs=[tensor])),
             (stub.RepositoryIndex, pb.RepositoryIndexRequest())]
    try:
        for call, message in calls:
            with capture_logs() as logs, pytest.raises(GRPCError) as e:
                await call(message)
            assert (e.value.status, e.value.message) == (Status.INTERNAL, MESSAGE)
            assert len(bug_events(logs)) == 1
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live  # serving on
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


async def test_unix_socket(tmp_path):
    front = UnixFrontEnd(BuggyDataPlane(), 1 << 20)
    await front.start(str(tmp_path / "inferd.sock"), "nogroup-for-this-test")
    x = {"x": np.ones(1, np.int32)}
    try:
        async with AsyncClient(socket=str(tmp_path / "inferd.sock")) as client:
            for call in (lambda: client.model_metadata("m"), lambda: client.infer("m", x), client.models):
                with capture_logs() as logs, pytest.raises(InferdClientError) as e:
                    await call()
                assert (e.value.code, e.value.message) == ("internal", MESSAGE)
                assert len(bug_events(logs)) == 1
            assert await client.live()  # the same connection, serving on
            assert client.connections_opened == 1
    finally:
        await front.close()
