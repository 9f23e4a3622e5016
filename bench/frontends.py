"""A Workload's requests on each front-end: the pre-encoded bytes loadgen sends, one request off
the hot path checked against onnxruntime, and the batch sizes from /metrics.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket

import loadgen
import msgpack
import numpy as np
from workloads import Workload

MODES = ("json", "binary", "grpc", "unix")
FRONTEND = {"json": "http", "binary": "http", "grpc": "grpc", "unix": "socket"}  # log "frontend"
KIND = {"json": "http", "binary": "http", "grpc": "grpc", "unix": "unix"}  # loadgen kind
DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}
NUMPY = {"FP32": "<f4", "INT32": "<i4"}


def encode_http(mode: str, wl: Workload) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a V2 infer request, in 'json' or 'binary' encoding."""
    if mode == "json":
        body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": DATATYPE[a.dtype],
                            "data": a.ravel().tolist()} for n, a in wl.inputs.items()]}
        return json.dumps(body, separators=(",", ":")).encode(), {"Content-Type": "application/json"}
    raws = [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in wl.inputs.values()]
    head = json.dumps({
        "inputs": [{"name": n, "shape": list(a.shape), "datatype": DATATYPE[a.dtype],
                    "parameters": {"binary_data_size": len(r)}}
                   for (n, a), r in zip(wl.inputs.items(), raws)],
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in wl.ref],
    }, separators=(",", ":")).encode()
    return head + b"".join(raws), {"Content-Type": "application/octet-stream",
                                   "Inference-Header-Content-Length": str(len(head))}


def unix_message(wl: Workload, request_id: int = 1) -> dict:
    return {"id": request_id, "op": "infer", "model": wl.model,
            "inputs": [{"name": n, "datatype": DATATYPE[a.dtype], "shape": list(a.shape),
                        "data": a.astype(a.dtype.newbyteorder("<")).tobytes()}
                       for n, a in wl.inputs.items()]}


def grpc_message(wl: Workload):
    from inferd.daemon.frontends.grpc_gen import inference_pb2 as pb
    msg = pb.ModelInferRequest(model_name=wl.model)
    for n, a in wl.inputs.items():
        msg.inputs.add(name=n, datatype=DATATYPE[a.dtype], shape=a.shape)
        msg.raw_input_contents.append(a.astype(a.dtype.newbyteorder("<")).tobytes())
    return msg


def hot_request(mode: str, addr, wl: Workload) -> bytes:
    """The pre-encoded bytes loadgen sends for each request. One fixed unix id serves every
    connection: each has one request in flight, and ids need only be unique per connection."""
    if mode == "unix":
        return loadgen.build_frame(unix_message(wl))
    if mode == "grpc":
        return grpc_message(wl).SerializeToString()
    body, headers = encode_http(mode, wl)
    return loadgen.build_request(*addr, f"/v2/models/{wl.model}/infer", body, headers)


def compare(outputs: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str:
    for name, want in ref.items():
        y = outputs.get(name)
        if y is None or y.size != want.size or not np.allclose(y.reshape(want.shape), want, atol=1e-5):
            return f"MISMATCH {name}"
    return "ok"


def verify(mode: str, addr, wl: Workload) -> str:
    """Send one request off the hot path and compare its outputs with raw onnxruntime."""
    try:
        if mode == "unix":
            return compare(_infer_unix(addr, wl), wl.ref)
        if mode == "grpc":
            return compare(asyncio.run(_infer_grpc(addr, wl)), wl.ref)
        return compare(_infer_http(mode, addr, wl), wl.ref)
    except Exception as e:  # noqa: BLE001 - reported in the table, the run goes on
        return f"error: {e!r}"


def _infer_http(mode: str, addr, wl: Workload) -> dict[str, np.ndarray]:
    body, headers = encode_http(mode, wl)
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request("POST", f"/v2/models/{wl.model}/infer", body, headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    hlen = resp.getheader("Inference-Header-Content-Length")
    head = json.loads(data[: int(hlen)] if hlen else data)
    out, pos = {}, int(hlen or 0)
    for o in head["outputs"]:
        if "data" in o:
            out[o["name"]] = np.asarray(o["data"], NUMPY[o["datatype"]])
        else:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(data[pos : pos + size], NUMPY[o["datatype"]])
            pos += size
    return out


def _infer_unix(path: str, wl: Workload) -> dict[str, np.ndarray]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(loadgen.build_frame(unix_message(wl)))
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed before the reply")
            data += chunk
    reply = msgpack.unpackb(data[4 : 4 + int.from_bytes(data[:4], "big")])
    if reply.get("ok") is not True:
        raise RuntimeError(f"reply {reply.get('error')!r}")
    return {o["name"]: np.frombuffer(o["data"], NUMPY[o["datatype"]]) for o in reply["outputs"]}


async def _infer_grpc(addr, wl: Workload) -> dict[str, np.ndarray]:
    from grpclib.client import Channel, UnaryUnaryMethod

    from inferd.daemon.frontends.grpc_gen import inference_pb2 as pb
    channel = Channel(*addr)
    try:
        method = UnaryUnaryMethod(channel, loadgen.GRPC_METHOD, pb.ModelInferRequest,
                                  pb.ModelInferResponse)
        reply = await method(grpc_message(wl), timeout=10)
    finally:
        channel.close()
    return {o.name: np.frombuffer(raw, NUMPY[o.datatype])
            for o, raw in zip(reply.outputs, reply.raw_output_contents)}


def batch_metrics(addr) -> tuple[float, float] | None:
    """(sum, count) of the inferd_batch_size histogram over all its series; None if absent."""
    try:
        conn = http.client.HTTPConnection(*addr, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        conn.close()
    except (OSError, http.client.HTTPException):
        return None
    if resp.status != 200:
        return None
    total = {"_sum": 0.0, "_count": 0.0}
    found = False
    for line in text.splitlines():
        for suffix in total:
            name = "inferd_batch_size" + suffix
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                rest = line[line.rfind("}") + 1 :] if "{" in line else line[len(name) :]
                total[suffix] += float(rest.split()[0])
                found = True
    return (total["_sum"], total["_count"]) if found else None
