"""The KServe Python SDK against the daemon, unchanged: its REST client reads the Open
Inference Protocol's health bodies ({"live": true}, {"ready": true}) and sends V2 inference
requests.

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


async def main(url):
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        out = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "mlp_ready": await client.is_model_ready(url, "mlp"),
            "corrupt_ready": await client.is_model_ready(url, "corrupt"),
        }
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = []
        for name, x in (("INPUT0", a), ("INPUT1", np.ones_like(a))):
            tensor = kserve.InferInput(name, list(x.shape), "INT32")
            tensor.set_data_from_numpy(x)
            inputs.append(tensor)
        response = await client.infer(url, kserve.InferRequest("add_sub", inputs, request_id="sdk-1"), model_name="add_sub")
        out["outputs"] = {o.name: o.as_numpy().tolist() for o in response.outputs}
    finally:
        await client.close()
    print(json.dumps(out))


asyncio.run(main(sys.argv[1]))
'''


@pytest.fixture(scope="module")
def sdk_answers(daemon) -> dict:
    # (kserve is in the test extras; it is never imported here: see the module's docstring)
    done = subprocess.run([sys.executable, "-c", SDK, daemon.url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_health_answers_what_the_sdk_reads(sdk_answers):
    assert sdk_answers["live"] is True and sdk_answers["ready"] is True  # it read {"live": ...}, {"ready": ...}
    assert sdk_answers["mlp_ready"] is True
    assert sdk_answers["corrupt_ready"] is False  # a FAILED model: 503


def test_infer_through_the_sdk(sdk_answers):
    a = list(range(16))
    assert sdk_answers["outputs"]["OUTPUT0"] == [[x + 1 for x in a]]
    assert sdk_answers["outputs"]["OUTPUT1"] == [[x - 1 for x in a]]
