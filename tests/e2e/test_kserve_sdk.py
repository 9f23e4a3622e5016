"""The KServe Python SDK against the daemon, unchanged: its REST client reads the Open
Inference Protocol's health bodies ({"live": true}, {"ready": true}) and sends V2 inference
requests; its gRPC client does the same over inference.GRPCInferenceService.

The SDK runs in a subprocess: it imports its own copy of the protocol's messages, whose
`inference.*` names clash with tritonclient's in one process's protobuf pool."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SDK = '''
import asyncio, json, sys
import numpy as np
import kserve


def add_sub_request():
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = []
    for name, x in (("INPUT0", a), ("INPUT1", np.ones_like(a))):
        tensor = kserve.InferInput(name, list(x.shape), "INT32")
        tensor.set_data_from_numpy(x)
        inputs.append(tensor)
    return kserve.InferRequest("add_sub", inputs, request_id="sdk-1")


async def rest(url):
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        out = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "mlp_ready": await client.is_model_ready(url, "mlp"),
            "corrupt_ready": await client.is_model_ready(url, "corrupt"),
        }
        response = await client.infer(url, add_sub_request(), model_name="add_sub")
        out["outputs"] = {o.name: o.as_numpy().tolist() for o in response.outputs}
    finally:
        await client.close()
    return out


async def grpc(address):
    client = kserve.InferenceGRPCClient(address, retries=0, timeout=30)
    try:
        out = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "mlp_ready": await client.is_model_ready("mlp"),
            "corrupt_ready": await client.is_model_ready("corrupt"),
        }
        response = await client.infer(add_sub_request())
        out["outputs"] = {o.name: o.as_numpy().tolist() for o in response.outputs}
        out["id"] = response.id
    finally:
        await client.close()
    return out


async def main(url, address):
    print(json.dumps({"rest": await rest(url), "grpc": await grpc(address)}))


asyncio.run(main(*sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def sdk_answers(daemon) -> dict:
    # (kserve is in the test extras; it is never imported here: see the module's docstring)
    [grpc] = [e["address"] for e in daemon.events("listening") if e["frontend"] == "grpc"]
    done = subprocess.run([sys.executable, "-c", SDK, daemon.url, grpc], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("client", ["rest", "grpc"])
def test_health_answers_what_the_sdk_reads(sdk_answers, client):
    answers = sdk_answers[client]
    assert answers["live"] is True and answers["ready"] is True  # REST: it read {"live": ...}, {"ready": ...}
    assert answers["mlp_ready"] is True
    assert answers["corrupt_ready"] is False  # a FAILED model: 503, gRPC ready false


@pytest.mark.parametrize("client", ["rest", "grpc"])
def test_infer_through_the_sdk(sdk_answers, client):
    a = list(range(16))
    assert sdk_answers[client]["outputs"]["OUTPUT0"] == [[x + 1 for x in a]]
    assert sdk_answers[client]["outputs"]["OUTPUT1"] == [[x - 1 for x in a]]


def test_the_grpc_sdk_gets_the_request_id_back(sdk_answers):
    assert sdk_answers["grpc"]["id"] == "sdk-1"
