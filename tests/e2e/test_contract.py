"""One table of contract cases, run through all three front-ends: the same outcome everywhere,
each in its protocol's own status (HTTP status, gRPC status, Unix-socket error code)."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

import aiohttp
import msgpack
import numpy as np
import orjson
import pytest
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from tritonclient.grpc import service_pb2 as pb

HTTP_CODES = {400: "invalid_argument", 404: "not_found", 429: "resource_exhausted", 503: "unavailable", 500: "internal"}
GRPC_CODES = {Status.INVALID_ARGUMENT: "invalid_argument", Status.NOT_FOUND: "not_found",
              Status.RESOURCE_EXHAUSTED: "resource_exhausted", Status.UNAVAILABLE: "unavailable", Status.INTERNAL: "internal"}
DTYPES = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32}


@dataclasses.dataclass
class Call:
    model: str
    inputs: list  # (name, datatype, shape, raw bytes)
    version: str = ""
    outputs: list | None = None


def _ints(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, (rows, 16), dtype=np.int32)


def _add_sub(rows=1, seed=0, **changes):
    a, b = _ints(rows, seed), _ints(rows, seed + 1)
    inputs = [["INPUT0", "INT32", [rows, 16], a.tobytes()], ["INPUT1", "INT32", [rows, 16], b.tobytes()]]
    for index, field, value in changes.get("edit", []):
        inputs[index][{"name": 0, "datatype": 1, "shape": 2, "data": 3}[field]] = value
    if changes.get("drop"):
        inputs.pop()
    return Call("add_sub", [tuple(i) for i in inputs], changes.get("version", ""), changes.get("outputs")), a, b


# (id, call, expected: "ok" or an error code, check on the outputs)
def _cases():
    good1, a1, b1 = _add_sub(1, 10)
    good8, a8, b8 = _add_sub(8, 20)
    subset, a_s, b_s = _add_sub(2, 30, outputs=["OUTPUT1"])
    return [
        ("good batch 1", good1, "ok", lambda out: np.array_equal(out["OUTPUT0"], a1 + b1) and np.array_equal(out["OUTPUT1"], a1 - b1)),
        ("good batch 8", good8, "ok", lambda out: np.array_equal(out["OUTPUT0"], a8 + b8)),
        ("requested output subset", subset, "ok", lambda out: list(out) == ["OUTPUT1"] and np.array_equal(out["OUTPUT1"], a_s - b_s)),
        ("unknown model", dataclasses.replace(good1, model="nope"), "not_found", None),
        ("unknown version", dataclasses.replace(good1, version="9"), "not_found", None),
        ("failed model", dataclasses.replace(good1, model="corrupt"), "unavailable", None),
        ("wrong input name", _add_sub(edit=[(1, "name", "INPUTX")])[0], "invalid_argument", None),
        ("missing input", _add_sub(drop=True)[0], "invalid_argument", None),
        ("no inputs at all", dataclasses.replace(good1, inputs=[]), "invalid_argument", None),
        ("wrong datatype", _add_sub(edit=[(0, "datatype", "FP32")])[0], "invalid_argument", None),
        ("unknown datatype", _add_sub(edit=[(0, "datatype", "FLOAT")])[0], "invalid_argument", None),
        ("wrong shape", _add_sub(edit=[(0, "shape", [2, 8])])[0], "invalid_argument", None),
        ("element count", _add_sub(edit=[(0, "data", b"\0" * 60)])[0], "invalid_argument", None),
        ("unknown output", _add_sub(outputs=["OUTPUT9"])[0], "invalid_argument", None),
        ("batch over max_batch_size", _add_sub(33)[0], "invalid_argument", None),
    ]


CASES = _cases()


async def _http(daemon, call: Call):
    inputs, body = [], b""
    for name, datatype, shape, data in call.inputs:
        inputs.append({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(data)}})
        body += data
    doc = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if call.outputs:
        doc["outputs"] = [{"name": n} for n in call.outputs]
    header = orjson.dumps(doc)
    path = f"/v2/models/{call.model}" + (f"/versions/{call.version}" if call.version else "") + "/infer"
    async with aiohttp.ClientSession(daemon.url) as s:
        async with s.post(path, data=header + body, headers={"Inference-Header-Content-Length": str(len(header))}) as r:
            payload = await r.read()
            if r.status != 200:
                assert "error" in orjson.loads(payload)
                return HTTP_CODES[r.status], None
            n = int(r.headers["Inference-Header-Content-Length"])
    out, offset = {}, n
    for o in orjson.loads(payload[:n])["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(payload[offset:offset + size], DTYPES[o["datatype"]]).reshape(o["shape"])
        offset += size
    return "ok", out


async def _grpc(daemon, call: Call):
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    host, port = event["address"].rsplit(":", 1)
    message = pb.ModelInferRequest(model_name=call.model, model_version=call.version)
    for name, datatype, shape, data in call.inputs:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_input_contents.append(data)
    for name in call.outputs or []:
        message.outputs.add(name=name)
    channel = Channel(host, int(port))
    try:
        method = UnaryUnaryMethod(channel, "/inference.GRPCInferenceService/ModelInfer", pb.ModelInferRequest,
                                  pb.ModelInferResponse)
        reply = await method(message)
    except GRPCError as e:
        return GRPC_CODES[e.status], None
    finally:
        channel.close()
    return "ok", {o.name: np.frombuffer(raw, DTYPES[o.datatype]).reshape(list(o.shape))
                  for o, raw in zip(reply.outputs, reply.raw_output_contents)}


async def _unix(daemon, call: Call):
    reader, writer = await asyncio.open_unix_connection(daemon.socket_path)
    request = {"id": 1, "op": "infer", "model": call.model, "version": call.version,
               "inputs": [{"name": n, "datatype": d, "shape": s, "data": data} for n, d, s, data in call.inputs]}
    if call.outputs:
        request["outputs"] = call.outputs
    payload = msgpack.packb(request, use_bin_type=True)
    writer.write(struct.pack(">I", len(payload)) + payload)
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    reply = msgpack.unpackb(await reader.readexactly(length))
    writer.close()
    await writer.wait_closed()
    assert reply["id"] == 1
    if not reply["ok"]:
        assert reply["error"]["message"]
        return reply["error"]["code"], None
    return "ok", {o["name"]: np.frombuffer(o["data"], DTYPES[o["datatype"]]).reshape(o["shape"]) for o in reply["outputs"]}


FRONT_ENDS = {"http": _http, "grpc": _grpc, "unix": _unix}


@pytest.fixture(params=list(FRONT_ENDS))
def front_end(request, daemon):
    call = FRONT_ENDS[request.param]
    return lambda c: call(daemon, c)


@pytest.mark.parametrize("call,expected,check", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_same_outcome_through_every_front_end(front_end, call, expected, check):
    outcome, outputs = await front_end(call)
    assert outcome == expected
    if check is not None:
        assert check(outputs)
    # ... and the front-end keeps serving.
    outcome, outputs = await front_end(CASES[0][1])
    assert outcome == "ok" and CASES[0][3](outputs)


async def test_queue_full_through_every_front_end(daemon, front_end):
    """`held` queues one row at most and holds it up to 1 s for a fuller batch."""
    first = asyncio.ensure_future(front_end(dataclasses.replace(_add_sub(1)[0], model="held")))
    async with aiohttp.ClientSession(daemon.url) as s:  # wait until the first one is queued
        while 'inferd_queue_rows{model="held",version="1"} 1.0' not in await (await s.get("/metrics")).text():
            await asyncio.sleep(0.01)
    outcome, _ = await front_end(dataclasses.replace(_add_sub(1)[0], model="held"))
    assert outcome == "resource_exhausted"
    assert (await first)[0] == "ok"
