"""Hostile callers of the gRPC health and reflection services: too many Watch streams, a Watch
held across shutdown, big and malformed reflection requests, a reflection stream that never
ends, the token. Each gets a clear status; the daemon serves on and shuts down on time."""

from __future__ import annotations

import gzip
import os
import threading
import time

import grpc
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_raw import framed, grpc_call
from grpc_reflection.v1alpha.reflection_pb2 import ServerReflectionRequest

TOKEN = "services-token"
MAX_WATCHES = 64  # daemon/frontends/grpc_health.py
MAX_REFLECTION_REQUESTS = 1000  # daemon/frontends/grpc_reflection.py
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
LIST_SERVICES = b"\x3a\x00"  # a ServerReflectionRequest with list_services = "" (field 7)
STATUS = health_pb2.HealthCheckResponse.ServingStatus.Name


def _address(daemon) -> str:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


@pytest.fixture
def guarded(tmp_path, model_repo):
    """A daemon of its own (these tests unload models and stop it), with a token."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    os.chmod(tmp_path / "token", 0o600)
    (tmp_path / "inferd.toml").write_text(f'[auth]\ntoken_file = "{tmp_path / "token"}"\n')
    with DaemonProcess(model_repo, config=tmp_path / "inferd.toml") as d:
        yield d


def _watch(channel, service: str, token: str | None = None):
    metadata = [("authorization", f"Bearer {token}")] if token else None
    return health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service),
                                                     metadata=metadata, timeout=60)


def test_concurrent_watches_are_capped(daemon):
    channels = [grpc.insecure_channel(_address(daemon)) for _ in range(2)]  # (50 streams a connection)
    watches = [_watch(channels[i % 2], "") for i in range(MAX_WATCHES)]
    try:
        assert {STATUS(next(w).status) for w in watches} == {"SERVING"}
        extra = _watch(channels[0], "")
        with pytest.raises(grpc.RpcError) as caught:
            next(extra)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "watches" in caught.value.details()
        watches.pop().cancel()
        time.sleep(0.5)  # (the server learns of the cancel through RST_STREAM)
        again = _watch(channels[0], "")
        assert STATUS(next(again).status) == "SERVING"
        again.cancel()
    finally:
        for w in watches:
            w.cancel()
        for c in channels:
            c.close()


def test_a_watch_follows_a_model_unloaded_and_loaded_and_ends_at_shutdown(guarded):
    address = _address(guarded)
    auth = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(address) as channel:
        model, server = _watch(channel, "mlp", TOKEN), _watch(channel, "", TOKEN)
        assert STATUS(next(model).status) == "SERVING" and STATUS(next(server).status) == "SERVING"
        client = grpcclient.InferenceServerClient(address)
        client.unload_model("mlp", headers=dict(auth))
        assert STATUS(next(model).status) == "SERVICE_UNKNOWN"  # unloaded: unknown, as Check's NOT_FOUND
        client.load_model("mlp", headers=dict(auth))
        assert STATUS(next(model).status) == "SERVING"
        client.close()
        started = time.monotonic()
        stopper = threading.Thread(target=guarded.terminate)
        stopper.start()
        assert STATUS(next(server).status) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as caught:
            next(server)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE and "shutting down" in caught.value.details()
        stopper.join(60)
        assert guarded.proc.returncode == 0 and time.monotonic() - started < 2.5  # (not CLOSE_GRACE_S)


def test_reflection_needs_the_token_and_health_does_not(guarded):
    with grpc.insecure_channel(_address(guarded)) as channel:
        call = channel.stream_stream(REFLECTION, request_serializer=lambda m: m, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            list(call(iter([LIST_SERVICES]), timeout=10))
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        [reply] = list(call(iter([LIST_SERVICES]), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10))
        assert b"grpc.health.v1.Health" in reply
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert STATUS(check.status) == "SERVING"


def test_only_the_servers_own_health_is_open_without_the_token(guarded):
    """A model's health, and any Watch (a held stream), need the token as HTTP's model ready does:
    without it a caller learns neither which models exist nor whether they are ready."""
    auth = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(_address(guarded)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("mlp", "no-such-model"):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED, service
        assert STATUS(stub.Check(health_pb2.HealthCheckRequest(service="mlp"), metadata=auth, timeout=10).status) == "SERVING"
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"), metadata=auth, timeout=10)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        for service in ("", "mlp"):
            with pytest.raises(grpc.RpcError) as caught:
                next(_watch(channel, service))
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED, service
        watch = _watch(channel, "", TOKEN)
        assert STATUS(next(watch).status) == "SERVING"
        watch.cancel()


def test_a_reflection_stream_carries_a_bounded_number_of_requests(daemon):
    with grpc.insecure_channel(_address(daemon)) as channel:
        call = channel.stream_stream(REFLECTION, request_serializer=lambda m: m, response_deserializer=lambda b: b)
        replies = []
        with pytest.raises(grpc.RpcError) as caught:
            for reply in call(iter([LIST_SERVICES] * (MAX_REFLECTION_REQUESTS + 5)), timeout=60):
                replies.append(reply)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(replies) == MAX_REFLECTION_REQUESTS


@pytest.mark.parametrize("method, body, status, words", [
    (REFLECTION, framed(ServerReflectionRequest(host="f" * (2 << 20))), "8", "server.max_structured_bytes"),
    (REFLECTION, framed(b"\x0a\xff\xff\xff\xff\x0f"), "3", "not a valid protobuf message"),
    ("/grpc.health.v1.Health/Check", framed(health_pb2.HealthCheckRequest(service="s" * (2 << 20))), "8",
     "server.max_structured_bytes"),
    ("/grpc.health.v1.Health/Watch", framed(b"\x0a\x05"), "3", "not a valid protobuf message"),
    ("/grpc.health.v1.Health/Check", framed(health_pb2.HealthCheckRequest(service="s" * (256 << 10))), "5",
     "unknown service"),
], ids=["reflection-big", "reflection-corrupt", "check-big", "watch-corrupt", "check-long-name"])
def test_big_and_malformed_requests_get_clear_statuses(daemon, method, body, status, words):
    since = len(daemon.lines)
    _, service, name = method.split("/")
    answer = grpc_call(int(_address(daemon).rsplit(":", 1)[1]), body, service=service, method=name)
    assert answer.status == status and words in answer.message and len(answer.message) < 1200, answer.status
    assert not [line for line in daemon.lines[since:] if "Traceback" in line or '"exception"' in line]


def test_a_compressed_health_check_is_served(daemon):
    answer = grpc_call(int(_address(daemon).rsplit(":", 1)[1]),
                       framed(health_pb2.HealthCheckRequest(service="mlp"), compress=gzip.compress),
                       service="grpc.health.v1.Health", method="Check", extra=[("grpc-encoding", "gzip")])
    assert answer.status == "0"
    with grpc.insecure_channel(_address(daemon)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="mlp"),
                                                          compression=grpc.Compression.Gzip, timeout=10)
        assert STATUS(reply.status) == "SERVING"
