"""Inference through real V2 clients against the running daemon, checked against in-process
onnxruntime on the same model files."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from samples import EVERY_DATATYPE

from inferd.client import Client

RNG = np.random.default_rng(7)


def _mlp_inputs(rows: int, client_module, binary: bool):
    x = RNG.standard_normal((rows, 512)).astype(np.float32)
    tensor = client_module.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return x, [tensor], [client_module.InferRequestedOutput("output", binary_data=binary)]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("rows", [1, 8])
def test_tritonclient_sync_matches_onnxruntime(daemon, reference, rows, binary):
    client = httpclient.InferenceServerClient(daemon.url.removeprefix("http://"))
    x, inputs, outputs = _mlp_inputs(rows, httpclient, binary)
    result = client.infer("mlp", inputs, outputs=outputs, request_id=f"sync-{rows}")
    assert result.get_response()["id"] == f"sync-{rows}"
    np.testing.assert_allclose(result.as_numpy("output"), reference("mlp", {"input": x})["output"], atol=1e-5)
    client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("rows", [1, 8])
async def test_tritonclient_aio_matches_onnxruntime(daemon, reference, rows, binary):
    client = aioclient.InferenceServerClient(daemon.url.removeprefix("http://"))
    try:
        x, inputs, outputs = _mlp_inputs(rows, aioclient, binary)
        result = await client.infer("mlp", inputs, outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("output"), reference("mlp", {"input": x})["output"], atol=1e-5)
        assert await client.is_model_ready("mlp")
    finally:
        await client.close()


def test_requested_output_subset_and_version_path(daemon):
    client = httpclient.InferenceServerClient(daemon.url.removeprefix("http://"))
    a = RNG.integers(-100, 100, (3, 16), dtype=np.int32)
    b = RNG.integers(-100, 100, (3, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [3, 16], "INT32"), httpclient.InferInput("INPUT1", [3, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    result = client.infer("add_sub", inputs, model_version="1", outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["model_version"] == "1"
    client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_v2_datatype_round_trips(daemon, binary):
    """identity_all echoes one input per V2 datatype, BYTES included."""
    client = httpclient.InferenceServerClient(daemon.url.removeprefix("http://"))
    values = EVERY_DATATYPE
    inputs = []
    for datatype, array in values.items():
        tensor = httpclient.InferInput(f"IN_{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(f"OUT_{t}", binary_data=binary) for t in values]
    result = client.infer("identity_all", inputs, outputs=outputs)
    for datatype, array in values.items():
        got = result.as_numpy(f"OUT_{datatype}")
        assert got.shape == array.shape, datatype
        if datatype == "BYTES":
            assert [bytes(x) if not isinstance(x, str) else x.encode() for x in got.reshape(-1)] == list(array.reshape(-1))
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)
    client.close()


async def test_json_is_accepted_with_any_content_type(daemon):
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    async with aiohttp.ClientSession() as session:
        for content_type in ("application/json", "application/octet-stream", "text/plain"):
            async with session.post(f"{daemon.url}/v2/models/fixed/infer", data=orjson.dumps(body),
                                    headers={"Content-Type": content_type}) as r:
                assert r.status == 200, await r.text()
                doc = await r.json()
                assert doc["outputs"][0]["data"] == [2, 4, 6, 8, 10, 12]


async def test_health_metadata_config_and_stats(daemon):
    async with aiohttp.ClientSession(daemon.url) as s:
        assert (await s.get("/v2/health/live")).status == 200
        assert (await s.get("/v2/health/ready")).status == 200
        server = await (await s.get("/v2")).json()
        assert server["name"] == "inferd" and "binary_tensor_data" in server["extensions"]
        meta = await (await s.get("/v2/models/mlp")).json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 512]}]
        assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
        assert (await s.get("/v2/models/mlp/versions/1/ready")).status == 200
        config = await (await s.get("/v2/models/add_sub/config")).json()
        assert config["max_batch_size"] == 32  # from add_sub/config.toml
        assert config["input"][0] == {"name": "INPUT0", "data_type": "TYPE_INT32", "format": "FORMAT_NONE", "dims": [16],
                                      "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}
        fixed = await (await s.get("/v2/models/fixed/config")).json()
        assert fixed["max_batch_size"] == 0 and fixed["input"][0]["dims"] == [2, 3]
        stats = await (await s.get("/v2/models/fixed/stats")).json()
        entry = stats["model_stats"][0]
        assert entry["name"] == "fixed" and entry["inference_stats"]["success"]["count"] >= 1


def test_tritonclient_metadata_and_config_calls(daemon):
    """The calls perf_analyzer makes before it starts sending load."""
    client = httpclient.InferenceServerClient(daemon.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_model_metadata("mlp")["platform"] == "onnxruntime_onnx"
    assert client.get_model_config("mlp")["max_batch_size"] == 64
    assert "model_stats" in client.get_inference_statistics("mlp")
    client.close()


async def test_repository_index_lists_states_and_reasons(daemon):
    async with aiohttp.ClientSession(daemon.url) as s:
        index = await (await s.post("/v2/repository/index")).json()
    by_name = {entry["name"]: entry for entry in index}
    assert by_name["mlp"]["state"] == "READY"
    assert by_name["corrupt"]["state"] == "FAILED" and "Protobuf" in by_name["corrupt"]["reason"]
    assert ".hidden" not in by_name and "partial.onnx" not in by_name


async def test_corrupt_model_is_failed_with_a_reason_and_others_serve(daemon, reference):
    async with aiohttp.ClientSession(daemon.url) as s:
        r = await s.get("/v2/models/corrupt/ready")
        assert r.status == 503
        r = await s.post("/v2/models/corrupt/infer", json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
        assert r.status == 503
        assert "FAILED" in (await r.json())["error"]
        x = np.ones((1, 512), np.float32)
        tensor = {"name": "input", "shape": [1, 512], "datatype": "FP32", "data": x.reshape(-1).tolist()}
        r = await s.post("/v2/models/mlp/infer", json={"inputs": [tensor]})
        assert r.status == 200
        np.testing.assert_allclose((await r.json())["outputs"][0]["data"], reference("mlp", {"input": x})["output"].reshape(-1), atol=1e-5)
    failed = [e for e in daemon.events("model state") if e["model"] == "corrupt"]
    assert failed[-1]["state"] == "FAILED" and failed[-1]["reason"]


async def test_concurrent_first_answers_do_not_mix(daemon):
    """Smoke test that concurrency works through the aio client before the big load test."""
    client = aioclient.InferenceServerClient(daemon.url.removeprefix("http://"))
    try:
        async def one(i):
            a = np.full((1, 16), i, np.int32)
            inputs = [aioclient.InferInput("INPUT0", [1, 16], "INT32"), aioclient.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(a)
            result = await client.infer("add_sub", inputs)
            return i, result.as_numpy("OUTPUT0")

        for i, out in await asyncio.gather(*(one(i) for i in range(20))):
            np.testing.assert_array_equal(out, np.full((1, 16), 2 * i, np.int32))
    finally:
        await client.close()


def test_onnxruntime_lives_only_in_worker_processes(daemon):
    """The daemon stays small: the runtime is loaded by the workers, never by the daemon itself."""
    from pathlib import Path

    pid = daemon.proc.pid
    assert "onnxruntime" not in Path(f"/proc/{pid}/maps").read_text()
    inputs = {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)}
    with Client(socket=daemon.socket_path) as c:  # scale-to-zero models keep no worker after load: start one
        c.infer("add_sub", inputs)
    deadline = time.monotonic() + 30  # (the log is read by a thread: the event may trail the answer)
    while not (workers := [p for p in _started_workers(daemon) if Path(f"/proc/{p}/maps").exists()]):
        assert time.monotonic() < deadline, "a worker serves add_sub"
        time.sleep(0.05)
    assert all("onnxruntime" in Path(f"/proc/{p}/maps").read_text() for p in workers)
    assert set(workers) <= descendants(pid)  # forked by the daemon's forkserver


def _started_workers(daemon) -> list[int]:
    return [p for e in daemon.events("model loaded") for p in e["pids"]] + [e["pid"] for e in daemon.events("scaled up")]


def descendants(pid: int) -> set[int]:
    from pathlib import Path

    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


async def test_metrics_exposes_the_design_names(daemon):
    async with aiohttp.ClientSession(daemon.url) as s:
        x = np.ones((2, 3), np.float32)
        tensor = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.reshape(-1).tolist()}
        await s.post("/v2/models/fixed/infer", json={"inputs": [tensor]})
        text = await (await s.get("/metrics")).text()
    for name in ("inferd_requests_total", "inferd_request_duration_seconds_bucket", "inferd_queue_duration_seconds_bucket",
                 "inferd_compute_duration_seconds_bucket", "inferd_batch_size_bucket", "inferd_queue_rows",
                 "inferd_queue_limit_rows", "inferd_model_batch_limit", "inferd_model_state", "inferd_model_load_seconds",
                 "inferd_workers"):
        assert f"\n{name}{{" in text, name
    assert 'inferd_requests_total{code="OK",model="fixed",protocol="http",version="1"}' in text
    assert 'inferd_model_state{model="corrupt",state="FAILED",version="1"} 1.0' in text


async def test_v2_http_on_a_unix_socket(daemon):
    """`--http-socket`: the same REST API for `curl --unix-socket`."""
    import os
    import stat

    assert stat.S_IMODE(os.stat(daemon.http_socket_path).st_mode) == 0o660
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=daemon.http_socket_path)) as s:
        async with s.get("http://localhost/v2/health/ready") as r:
            assert r.status == 200
        body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
        async with s.post("http://localhost/v2/models/fixed/infer", json=body) as r:
            assert (await r.json())["outputs"][0]["data"] == [2, 4, 6, 8, 10, 12]
