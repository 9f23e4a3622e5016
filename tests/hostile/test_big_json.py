"""JSON bodies over server.max_structured_bytes, against the real daemon: decoded in a decoder
process (daemon/frontends/json_offload.py), so a Triton-sized JSON request is answered while
the event loop keeps answering health checks, and a body too costly to decode, a decoder that
dies, or too many big bodies at once get a clear answer while the daemon keeps serving. With
server.json_decoders = 0 such a body is refused (413) as before.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import threading
import time

import numpy as np
import orjson
import pytest
from daemon_process import DaemonProcess
from samples import EVERY_DATATYPE

from .test_requests import HealthProbe, _concurrently, _log_has_no_traceback, _PeakMemory, _post

INFER = "/v2/models/identity_all/infer"


def _fp32_body(values: np.ndarray, binary_output: bool = False) -> bytes:
    """An identity_all request (it needs every input) with `values` as IN_FP32."""
    inputs = [{"name": f"IN_{datatype}", "datatype": datatype, "shape": list(sample.shape),
               "data": [x.decode() for x in sample.reshape(-1)] if datatype == "BYTES" else sample.reshape(-1).tolist()}
              for datatype, sample in EVERY_DATATYPE.items() if datatype != "FP32"]
    inputs.append({"name": "IN_FP32", "datatype": "FP32", "shape": [1, values.size], "data": values.tolist()})
    doc = {"inputs": inputs, "outputs": [{"name": "OUT_FP32"}]}
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    return orjson.dumps(doc)


def _bytes_body(elements: list[str]) -> bytes:
    inputs = [{"name": f"IN_{datatype}", "datatype": datatype, "shape": list(sample.shape),
               "data": sample.reshape(-1).tolist()} for datatype, sample in EVERY_DATATYPE.items() if datatype != "BYTES"]
    inputs.append({"name": "IN_BYTES", "datatype": "BYTES", "shape": [1, len(elements)], "data": elements})
    return orjson.dumps({"inputs": inputs, "outputs": [{"name": "OUT_BYTES"}]})


def _values(mib: int) -> np.ndarray:
    """Random FP32 values whose JSON is about `mib` MiB (~21 bytes a value: float64 text of FP32 values)."""
    return np.random.default_rng(mib).standard_normal((mib << 20) // 21).astype(np.float32)


def _daemon_with(tmp_path_factory, model_repo, settings: str):
    tmp = tmp_path_factory.mktemp("bigjson")
    (tmp / "inferd.toml").write_text("[server]\n" + settings)
    return DaemonProcess(model_repo, config=tmp / "inferd.toml")


@pytest.fixture(scope="module")
def off(tmp_path_factory, model_repo):
    with _daemon_with(tmp_path_factory, model_repo, "json_decoders = 0\n") as d:
        yield d


@pytest.fixture(scope="module")
def small_memory(tmp_path_factory, model_repo):
    with _daemon_with(tmp_path_factory, model_repo, f"json_decode_memory_bytes = {128 << 20}\n") as d:
        yield d


@pytest.fixture(scope="module")
def short_time(tmp_path_factory, model_repo):
    with _daemon_with(tmp_path_factory, model_repo, "json_decode_timeout_s = 0.1\n") as d:
        yield d


def _decoders(daemon) -> list[int]:
    """The pids of the daemon's JSON decoder processes."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if parent == daemon.proc.pid and b"json_decoder" in command:
            pids.append(int(pid))
    return pids


def _bytes_read(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except OSError:
        return 0


def test_an_image_sized_json_request_is_answered(daemon):
    image = np.random.default_rng(0).random(224 * 224 * 3, dtype=np.float32)  # ~1.9 MiB of JSON: over 1 MiB
    body = _fp32_body(image)
    assert len(body) > 1 << 20
    with HealthProbe(daemon) as probe:
        status, doc = _post(daemon, INFER, body)
    assert status == 200, doc
    [output] = [o for o in doc["outputs"] if o["name"] == "OUT_FP32"]
    assert output["shape"] == [1, image.size]
    np.testing.assert_array_equal(np.array(output["data"], np.float32), image)
    assert probe.answered > 0


def test_health_is_answered_while_a_big_json_body_is_decoded(daemon):
    values = _values(40)
    body = _fp32_body(values)
    peak = _PeakMemory(daemon)
    answered_before_the_end = []
    with HealthProbe(daemon) as probe:
        time.sleep(0.2)
        status, doc = _post(daemon, INFER, body)
        answered_before_the_end.append(probe.answered)
    assert status == 200, doc
    assert answered_before_the_end[0] >= 2 and probe.slowest < 2.0  # the loop was not held by the decode
    assert peak.grown() < 6 * len(body)  # the body, its pipe slices, the arrays (the parse is the child's)


def test_a_big_json_bytes_list_is_answered_and_one_too_long_refused(daemon):
    elements = [f"{i:08d}" + "x" * 150 for i in range(65536)]  # ~10 MiB of JSON, server.max_value_elements
    with HealthProbe(daemon) as probe:
        status, doc = _post(daemon, INFER, _bytes_body(elements))
    assert status == 200 and doc["outputs"][0]["data"] == elements
    assert probe.answered > 0 and probe.slowest < 2.0
    status, doc = _post(daemon, INFER, _bytes_body([f"element {i:012d}" for i in range(70_000)]))  # 1.5 MiB
    assert status == 400 and "server.max_value_elements" in doc["error"]


def test_a_decoder_killed_mid_decode_is_a_clear_error_and_replaced(daemon):
    body = _fp32_body(_values(40))
    since = len(daemon.lines)
    already = {pid: _bytes_read(pid) for pid in _decoders(daemon)}  # what each has read so far

    def reading() -> list[int]:
        return [pid for pid in _decoders(daemon) if _bytes_read(pid) > already.get(pid, 0) + (4 << 20)]

    replies = []
    sender = threading.Thread(target=lambda: replies.append(_post(daemon, INFER, body)))
    sender.start()
    deadline = time.monotonic() + 60
    while not reading() and time.monotonic() < deadline:
        time.sleep(0.01)
    [pid] = reading()  # it is reading this body (or parsing it)
    os.kill(pid, signal.SIGKILL)
    sender.join(120)
    [(status, doc)] = replies
    assert status == 503 and "decoder process exited" in doc["error"]
    status, doc = _post(daemon, INFER, _fp32_body(_values(3)))
    assert status == 200 and pid not in _decoders(daemon)
    _log_has_no_traceback(daemon, since)


def _hold_partial_body(daemon, length: int) -> socket.socket:
    """A big JSON request whose body stops halfway: it holds its admission."""
    s = socket.create_connection(daemon.address, timeout=60)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % (INFER.encode(), length) + b'{"inputs": [' + b" " * (length // 2))
    return s


def test_big_json_bodies_past_the_queue_get_503(daemon):
    length = 4 << 20
    body = _fp32_body(_values(2))
    since = len(daemon.lines)
    held = [_hold_partial_body(daemon, length) for _ in range(3)]  # json_decoders 1 + json_decode_queue 2
    try:
        deadline = time.monotonic() + 30
        while (reply := _post(daemon, INFER, body))[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # the held requests are not admitted yet
        status, doc = reply
        assert status == 503 and "server.json_decode_queue" in doc["error"]
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 30
    while (reply := _post(daemon, INFER, body))[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.05)  # the closed requests give their admission back
    assert reply[0] == 200
    _log_has_no_traceback(daemon, since)


def test_a_json_bomb_is_refused_without_inflating_it(daemon):
    # aiohttp inflates on the loop: a compressed JSON body is never offloaded, and is abandoned
    # once it inflates past max_structured_bytes (offloaded, six of these held the loop 2 s).
    bomb = gzip.compress(b'{"inputs": [' + b" " * (80 << 20), 9)  # ~80 KiB that inflate past 64 MiB
    peak = _PeakMemory(daemon)
    with HealthProbe(daemon) as probe:
        replies = _concurrently(6, lambda: _post(daemon, INFER, bomb, {"Content-Encoding": "gzip"}))
    assert [status for status, _ in replies] == [413] * 6
    assert all("server.max_structured_bytes" in doc["error"] for _, doc in replies)
    assert probe.answered > 0 and probe.slowest < 2.0
    assert peak.grown() < 6 * 2 * (1 << 20) + (96 << 20)  # at most 1 MiB inflated per body


def test_a_decode_over_its_memory_bound_is_413_and_the_daemon_serves(small_memory):
    status, doc = _post(small_memory, INFER, _fp32_body(_values(40)))
    assert status == 413 and "server.json_decode_memory_bytes" in doc["error"]
    status, doc = _post(small_memory, INFER, _fp32_body(_values(2)))
    assert status == 200


def test_a_decode_over_its_time_bound_is_413_and_the_daemon_serves(short_time):
    status, doc = _post(short_time, INFER, _fp32_body(_values(30)))
    assert status == 413 and "server.json_decode_timeout_s" in doc["error"]
    status, doc = _post(short_time, INFER, _fp32_body(np.ones(1000, np.float32)))
    assert status == 200


def test_big_json_bodies_are_refused_before_they_are_parsed_without_decoders(off):
    numbers = orjson.dumps({"inputs": [{"name": "IN_INT32", "datatype": "INT32", "shape": [1, 4 << 20],
                                        "data": [0] * (4 << 20)}]})  # 8 MiB of JSON
    status, doc = _post(off, INFER, numbers)
    assert status == 413 and "server.max_structured_bytes" in doc["error"]
    bomb = gzip.compress(numbers, 9)  # ~8 KiB that inflate to 8 MiB
    peak = _PeakMemory(off)
    with HealthProbe(off) as probe:
        replies = _concurrently(6, lambda: _post(off, INFER, bomb, {"Content-Encoding": "gzip"}))
    assert [status for status, _ in replies] == [413] * 6
    assert probe.answered > 0 and probe.slowest < 2.0
    assert peak.grown() < 256 << 20  # each stopped inflating at 1 MiB (the old daemon: ~950 MiB for one)
    assert _decoders(off) == []


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_decoders_do_not_outlive_the_daemon(model_repo, stop):
    with DaemonProcess(model_repo) as d:
        status, _ = _post(d, INFER, _fp32_body(_values(2)))
        [pid] = _decoders(d)
        assert status == 200
        d.proc.send_signal(stop)
        d.proc.wait(60)
        deadline = time.monotonic() + 30
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid)
