"""Hostile sequence clients ([sequence_batching]): sequences opened and never ended hold a
bounded number of slots until they are idle for max_sequence_idle_us, a flood of new sequences
is refused once the bounded queue is full, and malformed sequence parameters (ids of the wrong
type, too long or out of range, flags that are not booleans, END without START) are refused
with the protocol's status on every front-end, while the daemon keeps serving."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.request

import msgpack
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from sequence_models import ints, write_python
from tritonclient.utils import InferenceServerException

IDLE_S = 0.5


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_sequences")
    # Two slots (max_batch_size 2, one worker), three queued requests at most.
    write_python(root, "bounded", "accumulate", corrid="TYPE_UINT64", extra="max_workers = 1\nmax_queue_rows = 3",
                 max_batch_size=2, idle_us=int(IDLE_S * 1e6))
    with DaemonProcess(root) as d:
        yield d


def _post(d, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{d.url}/v2/models/bounded/infer", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def _body(value: int, **parameters) -> dict:
    return {"inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [value]}], "parameters": parameters}


def _unix(d, **fields) -> dict:
    message = {"id": 1, "op": "infer", "model": "bounded",
               "inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": ints(3).tobytes()}], **fields}
    payload = msgpack.packb(message, use_bin_type=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(d.socket_path)
        s.sendall(struct.pack(">I", len(payload)) + payload)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            data += s.recv(65536)
    return msgpack.unpackb(data[4:], raw=False)


def _alive(d) -> None:
    assert d.http_json("/v2/health/ready") == {"ready": True}


BAD_HTTP = [
    ({"sequence_id": -1, "sequence_start": True}, "unsigned 64-bit"),
    ({"sequence_id": 1 << 64, "sequence_start": True}, ""),  # (the JSON decoder may refuse it first)
    ({"sequence_id": 1.5, "sequence_start": True}, "unsigned integer or a string"),
    ({"sequence_id": True, "sequence_start": True}, "unsigned integer or a string"),
    ({"sequence_id": [1], "sequence_start": True}, "unsigned integer or a string"),
    ({"sequence_id": "x" * 100_000, "sequence_start": True}, "characters long"),
    ({"sequence_id": "7", "sequence_start": True}, "takes an integer sequence_id"),  # its CORRID is UINT64
    ({"sequence_id": 7, "sequence_start": "true"}, "sequence_start must be a boolean"),
    ({"sequence_id": 7, "sequence_start": 1}, "sequence_start must be a boolean"),
    ({"sequence_id": 7, "sequence_start": True, "sequence_end": "yes"}, "sequence_end must be a boolean"),
    ({"sequence_id": 0, "sequence_start": True}, "non-zero or non-empty correlation ID"),
    ({}, "non-zero or non-empty correlation ID"),
    ({"sequence_id": 987654, "sequence_end": True}, "must specify the START flag"),  # END without START
]


@pytest.mark.parametrize(("parameters", "words"), BAD_HTTP)
def test_bad_sequence_parameters_are_400(daemon, parameters, words):
    status, doc = _post(daemon, _body(1, **parameters))
    assert status == 400 and words in doc["error"] and len(doc["error"]) < 1000
    _alive(daemon)


def test_bad_sequence_fields_on_the_unix_socket_and_grpc(daemon):
    for fields, words in [({"sequence_id": b"\x00" * 10, "sequence_start": True}, "unsigned integer or a string"),
                          ({"sequence_id": 5, "sequence_start": 1}, "must be a boolean"),
                          ({"sequence_id": 55555}, "must specify the START flag")]:
        reply = _unix(daemon, **fields)
        assert reply["error"]["code"] == "invalid_argument" and words in reply["error"]["message"]
    reply = _unix(daemon, sequence_id=4242, sequence_start=True, sequence_end=True)
    assert reply["ok"], reply
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    client = grpcclient.InferenceServerClient(event["address"])
    x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(ints(1))
    with pytest.raises(InferenceServerException, match="characters long") as raised:
        client.infer("bounded", [x], sequence_id="9" * 5000, sequence_start=True)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    _alive(daemon)


def test_sequences_never_ended_hold_bounded_slots_until_idle(daemon):
    """A client opens 12 sequences at once and never ends them: two hold the slots, three wait
    (the queue's bound), the rest are refused at once with 429; the waiting ones get slots as
    the first go idle, and each abandoned sequence's next request is refused, saying why."""
    results: dict[int, tuple[int, dict, float]] = {}

    def open_sequence(sid: int) -> None:
        began = time.monotonic()
        status, doc = _post(daemon, _body(sid, sequence_id=sid, sequence_start=True))
        results[sid] = (status, doc, time.monotonic() - began)

    threads = [threading.Thread(target=open_sequence, args=(sid,)) for sid in range(100, 112)]
    for t in threads:
        t.start()
    _alive(daemon)  # while slots are held and requests wait
    for t in threads:
        t.join()
    served = sorted(sid for sid, (status, _, _) in results.items() if status == 200)
    refused = [doc for status, doc, _ in results.values() if status == 429]
    assert len(served) + len(refused) == 12
    assert 2 <= len(served) <= 5 and refused and all("queue full" in doc["error"] for doc in refused)
    waited = sorted(seconds for status, _, seconds in results.values() if status == 200)
    assert waited[-1] >= IDLE_S * 0.9  # the later ones waited for an idle sequence to free a slot
    for sid in served:
        assert np.asarray(results[sid][1]["outputs"][0]["data"]).tolist() == [sid]
    time.sleep(IDLE_S * 1.5)
    status, doc = _post(daemon, _body(1, sequence_id=served[0]))
    assert status == 400 and "max_sequence_idle_us" in doc["error"]
    status, doc = _post(daemon, _body(1, sequence_id=served[-1], sequence_start=True, sequence_end=True))
    assert status == 200
    _alive(daemon)
