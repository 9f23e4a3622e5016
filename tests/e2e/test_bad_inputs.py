"""Every bad request gets a 4xx with {"error": ...}, and the daemon keeps serving."""

from __future__ import annotations

import io
import struct

import aiohttp
import numpy as np
import orjson
import pytest

X = np.arange(32, dtype=np.int32).reshape(2, 16)


def _tensor(name="INPUT0", shape=(2, 16), datatype="INT32", data=None):
    return {"name": name, "shape": list(shape), "datatype": datatype,
            "data": X.reshape(-1).tolist() if data is None else data}


def _json(*inputs, **extra):
    return orjson.dumps({"inputs": list(inputs), **extra}), {}


def _binary(header: dict, payload: bytes, header_length: int | None = None):
    head = orjson.dumps(header)
    n = len(head) if header_length is None else header_length
    return head + payload, {"Inference-Header-Content-Length": str(n)}


GOOD = (_tensor("INPUT0"), _tensor("INPUT1"))
BIN_HEADER = {"inputs": [
    {"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "parameters": {"binary_data_size": 128}},
    {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "parameters": {"binary_data_size": 128}},
]}

# (id, path, (body, headers), expected status, words the error must contain)
CASES = [
    ("unknown model", "/v2/models/nope/infer", _json(*GOOD), 404, "unknown model"),
    ("unknown version", "/v2/models/add_sub/versions/9/infer", _json(*GOOD), 404, "no version"),
    ("wrong input name", "/v2/models/add_sub/infer", _json(_tensor("INPUT0"), _tensor("INPUTX")), 400, "INPUTX"),
    ("missing input", "/v2/models/add_sub/infer", _json(_tensor("INPUT0")), 400, "missing input 'INPUT1'"),
    ("duplicate input", "/v2/models/add_sub/infer", _json(_tensor("INPUT0"), _tensor("INPUT0")), 400, "twice"),
    ("wrong datatype", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", datatype="FP32"), _tensor("INPUT1")), 400, "expects INT32"),
    ("unknown datatype", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", datatype="FLOAT"), _tensor("INPUT1")), 400, "unknown datatype"),
    ("datatype not a string", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", datatype=["INT32"]), _tensor("INPUT1")), 400, "unknown datatype"),
    ("wrong shape", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", shape=(4, 8)), _tensor("INPUT1")), 400, "expects [-1, 16]"),
    ("wrong rank", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", shape=(32,)), _tensor("INPUT1")), 400, "shape"),
    ("element count", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", data=[1, 2, 3]), _tensor("INPUT1")), 400, "needs 32 elements, got 3"),
    ("ragged data", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", data=[[1, 2], [3]]), _tensor("INPUT1")), 400, "regular list"),
    ("text in numbers", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", data=["a"] * 32), _tensor("INPUT1")), 400, "INPUT0"),
    ("negative shape", "/v2/models/add_sub/infer", _json(_tensor("INPUT0", shape=(-1, 16)), _tensor("INPUT1")), 400, "non-negative"),
    ("batch mismatch", "/v2/models/add_sub/infer",
     _json(_tensor("INPUT0"), _tensor("INPUT1", shape=(1, 16), data=X[0].tolist())), 400, "batch size"),
    ("batch too large", "/v2/models/add_sub/infer",
     _json(_tensor("INPUT0", shape=(33, 16), data=[0] * 528), _tensor("INPUT1", shape=(33, 16), data=[0] * 528)), 400, "max_batch_size 32"),
    ("unknown output", "/v2/models/add_sub/infer", _json(*GOOD, outputs=[{"name": "OUTPUT9"}]), 400, "unknown output 'OUTPUT9'"),
    ("malformed JSON", "/v2/models/add_sub/infer", (b'{"inputs": [', {}), 400, "malformed JSON"),
    ("not an object", "/v2/models/add_sub/infer", (b"[1, 2]", {}), 400, "JSON object"),
    ("no inputs", "/v2/models/add_sub/infer", (b'{"inputs": []}', {}), 400, "missing input 'INPUT0'"),
    ("inputs not a list", "/v2/models/add_sub/infer", (b'{"inputs": {}}', {}), 400, "must be a list"),
    ("input without data", "/v2/models/add_sub/infer", _json({"name": "INPUT0", "shape": [2, 16], "datatype": "INT32"}, _tensor("INPUT1")), 400, "neither"),
    ("truncated binary payload", "/v2/models/add_sub/infer", _binary(BIN_HEADER, X.tobytes() + X.tobytes()[:100]), 400, "truncated"),
    ("binary size vs shape", "/v2/models/add_sub/infer",
     _binary({"inputs": [{**BIN_HEADER["inputs"][0], "parameters": {"binary_data_size": 124}}, BIN_HEADER["inputs"][1]]},
             X.tobytes()[:124] + X.tobytes()), 400, "needs 128 bytes, got 124"),
    ("unclaimed binary bytes", "/v2/models/add_sub/infer", _binary(BIN_HEADER, X.tobytes() * 2 + b"xx"), 400, "belong to no input"),
    ("header length larger than body", "/v2/models/add_sub/infer", _binary(BIN_HEADER, X.tobytes() * 2, header_length=10_000), 400, "only"),
    ("header length not a number", "/v2/models/add_sub/infer", (orjson.dumps({"inputs": list(GOOD)}), {"Inference-Header-Content-Length": "ten"}), 400, "integer"),
    ("bad BYTES framing", "/v2/models/identity_all/infer",
     _binary({"inputs": [{"name": "IN_BYTES", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]},
             struct.pack("<I", 50) + b"ab"), 400, "runs past the end"),
    ("unknown route", "/v2/nothing/here", _json(*GOOD), 404, "Not Found"),
]


@pytest.mark.parametrize("path,request_,status,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_request_is_refused_clearly_and_the_next_one_is_served(daemon, path, request_, status, words):
    body, headers = request_
    async with aiohttp.ClientSession(daemon.url) as s:
        async with s.post(path, data=body, headers=headers) as r:
            assert r.status == status
            doc = await r.json(content_type=None)
            assert words in doc["error"]
        good, _ = _json(*GOOD)
        async with s.post("/v2/models/add_sub/infer", data=good) as r:
            assert r.status == 200
            out = (await r.json())["outputs"]
            assert np.array_equal(np.array(out[0]["data"]).reshape(2, 16), X + X)


async def test_wrong_method_and_oversized_body(daemon):
    async with aiohttp.ClientSession(daemon.url) as s:
        async with s.get("/v2/models/add_sub/infer") as r:
            assert r.status == 405
            assert "error" in await r.json(content_type=None)
        async with s.post("/v2/models/add_sub/infer", data=io.BytesIO(b"0" * (65 * 1024 * 1024))) as r:
            assert r.status == 413
            assert "error" in await r.json(content_type=None)
