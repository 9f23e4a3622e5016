"""Hostile uses of the system shared memory extension against the real daemon: every one gets a
clear 400 / INVALID_ARGUMENT (or 404, 429) and the daemon serves on. A client may shrink its file
after registering it (a mapped read past its end would be a SIGBUS that kills the daemon), name
files outside /dev/shm, symlinks, FIFOs and other users' files, register without end, and
unregister a region a request still writes into."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import struct
import threading
import uuid

import make_models
import msgpack
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException
from waiting import eventually

ROWS = np.arange(16, dtype=np.int32).reshape(1, 16)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """add_sub, identity_all, and 'held': add_sub waiting up to 5 s for its batch to fill."""
    root = tmp_path_factory.mktemp("shm-models")
    make_models.build_add_sub(root / "add_sub" / "1" / "model.onnx")
    make_models.build_identity_all(root / "identity_all.onnx")
    make_models.build_add_sub(root / "held" / "1" / "model.onnx")
    (root / "held" / "config.toml").write_text("max_batch_size = 8\nmax_queue_delay_ms = 5000\n")
    with DaemonProcess(root) as d:
        yield d


@pytest.fixture
def hc(daemon):
    c = httpclient.InferenceServerClient(daemon.url[len("http://"):])
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def gc(daemon):
    [event] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    c = grpcclient.InferenceServerClient(event["address"])
    yield c
    c.close()


@pytest.fixture
def shm_file():
    """A file in /dev/shm of `size` bytes holding ROWS twice; its key."""
    made = []

    def make(size: int = 2 * ROWS.nbytes) -> tuple[str, str]:
        key = f"/inferd_hostile_{uuid.uuid4().hex[:12]}"
        path = "/dev/shm" + key
        with open(path, "wb") as f:
            f.write((ROWS.tobytes() * 2).ljust(size, b"\0")[:size])
        made.append(path)
        return key, path

    yield make
    for path in made:
        if os.path.lexists(path):
            os.unlink(path)


def _post(daemon, path: str, doc) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(*daemon.address, timeout=60)
    try:
        connection.request("POST", path, body=orjson.dumps(doc))
        response = connection.getresponse()
        return response.status, orjson.loads(response.read() or b"{}")
    finally:
        connection.close()


def _infer(daemon, inputs: list, outputs: list | None = None) -> tuple[int, dict]:
    doc = {"inputs": inputs}
    if outputs is not None:
        doc["outputs"] = outputs
    return _post(daemon, "/v2/models/add_sub/infer", doc)


def _from_region(name: str, region: str, size: int = ROWS.nbytes, offset: int = 0) -> dict:
    return {"name": name, "datatype": "INT32", "shape": [1, 16], "parameters": {
        "shared_memory_region": region, "shared_memory_byte_size": size, "shared_memory_offset": offset}}


def _sent(name: str) -> dict:
    return {"name": name, "datatype": "INT32", "shape": [1, 16], "data": ROWS.reshape(-1).tolist()}


def _serves(daemon) -> None:
    """The daemon is alive and answers an ordinary request correctly."""
    status, body = _infer(daemon, [_sent("INPUT0"), _sent("INPUT1")])
    assert status == 200, body
    assert {o["name"]: o["data"] for o in body["outputs"]}["OUTPUT0"] == (2 * ROWS).reshape(-1).tolist()


def _daemon_fds_on(daemon, path: str) -> int:
    fd_dir = f"/proc/{daemon.proc.pid}/fd"
    return sum(1 for fd in os.listdir(fd_dir) if os.readlink(os.path.join(fd_dir, fd)).startswith(path))


@pytest.mark.parametrize("key", ["../etc/passwd", "/../../etc/passwd", "/a/b", "/", "", "/.", "/..", "x\0y", "k" * 300])
def test_a_key_outside_dev_shm_is_refused(daemon, hc, gc, key):
    status, body = _post(daemon, "/v2/systemsharedmemory/region/r/register", {"key": key, "offset": 0, "byte_size": 4})
    assert status == 400 and "key" in body["error"]
    if "\0" not in key:
        with pytest.raises(InferenceServerException, match="key"):
            gc.register_system_shared_memory("r", key, 4)
    assert hc.get_system_shared_memory_status() == []


def test_a_symlink_a_fifo_and_a_missing_key_are_refused(daemon, hc, gc, shm_file):
    key, path = shm_file()
    link = path + "_link"
    os.symlink(path, link)
    fifo = path + "_fifo"
    os.mkfifo(fifo)
    try:
        for bad, why in ((link, "symbolic link"), (fifo, "regular file"), (path + "_none", "No such file")):
            with pytest.raises(InferenceServerException, match=why):
                hc.register_system_shared_memory("r", bad[len("/dev/shm"):], 4)
            with pytest.raises(InferenceServerException, match=why):
                gc.register_system_shared_memory("r", bad[len("/dev/shm"):], 4)
    finally:
        os.unlink(link)
        os.unlink(fifo)
    _serves(daemon)


def test_another_users_file_is_refused_even_when_its_mode_allows(daemon, hc, shm_file):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    key, path = shm_file()
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o666)
    with pytest.raises(InferenceServerException, match="owned by the server's user"):
        hc.register_system_shared_memory("theirs", key, 4)


def test_a_region_past_the_end_of_its_file_is_refused(daemon, hc, gc, shm_file):
    key, _ = shm_file(64)
    for offset, size in ((0, 65), (60, 8), (2**63, 1)):
        with pytest.raises(InferenceServerException, match="smaller than offset"):
            hc.register_system_shared_memory("r", key, size, offset=offset)
    status, body = _post(daemon, "/v2/systemsharedmemory/region/r/register", {"key": key, "offset": -1, "byte_size": 4})
    assert status == 400 and "offset" in body["error"]
    status, body = _post(daemon, "/v2/systemsharedmemory/region/r/register", {"key": key, "byte_size": "4"})
    assert status == 400 and "byte_size" in body["error"]
    status, body = _post(daemon, "/v2/systemsharedmemory/region/r/register", [1, 2])
    assert status == 400
    assert hc.get_system_shared_memory_status() == []


def test_inputs_and_outputs_outside_their_region_are_refused(daemon, hc, gc, shm_file):
    key, _ = shm_file()
    hc.register_system_shared_memory("in", key, 2 * ROWS.nbytes)
    cases = [
        ([_from_region("INPUT0", "in", offset=ROWS.nbytes + 4), _sent("INPUT1")], None, "run past the end"),
        ([_from_region("INPUT0", "in", size=2 * ROWS.nbytes + 4), _sent("INPUT1")], None, "run past the end"),
        ([_from_region("INPUT0", "in", size=ROWS.nbytes - 4), _sent("INPUT1")], None, "needs 64 bytes"),
        ([_from_region("INPUT0", "nowhere"), _sent("INPUT1")], None, "no shared memory region"),
        ([{**_from_region("INPUT0", "in"), "data": [1]}, _sent("INPUT1")], None, "together with data"),
        ([{**_from_region("INPUT0", "in"), "parameters": {"shared_memory_region": "in"}}, _sent("INPUT1")], None,
         "needs shared_memory_byte_size"),
        ([{**_from_region("INPUT0", "in"), "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": -64}},
          _sent("INPUT1")], None, "non-negative"),
        ([_sent("INPUT0"), _sent("INPUT1")], [{"name": "OUTPUT0", "parameters": {
            "shared_memory_region": "in", "shared_memory_byte_size": 64, "shared_memory_offset": 100}}], "run past the end"),
        ([_sent("INPUT0"), _sent("INPUT1")], [{"name": "OUTPUT0", "parameters": {
            "shared_memory_region": "in", "shared_memory_byte_size": 8}}], "more than its shared_memory_byte_size"),
        ([_sent("INPUT0"), _sent("INPUT1")], [{"name": "OUTPUT0", "parameters": {
            "shared_memory_region": "gone", "shared_memory_byte_size": 64}}], "no shared memory region"),
    ]
    for inputs, outputs, message in cases:
        status, body = _infer(daemon, inputs, outputs)
        assert status == 400 and message in body["error"], (inputs, outputs, body)
    # gRPC: the same checks answer INVALID_ARGUMENT
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    tensor.set_shared_memory("in", ROWS.nbytes, offset=ROWS.nbytes + 4)
    other = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    other.set_data_from_numpy(ROWS)
    with pytest.raises(InferenceServerException, match="run past the end") as raised:
        gc.infer("add_sub", [tensor, other])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    _serves(daemon)


def test_a_file_shrunk_after_register_is_an_error_not_a_crash(daemon, hc, shm_file):
    key, path = shm_file()
    hc.register_system_shared_memory("in", key, 2 * ROWS.nbytes)
    hc.register_system_shared_memory("out", key, 2 * ROWS.nbytes)
    os.truncate(path, 8)
    status, body = _infer(daemon, [_from_region("INPUT0", "in"), _from_region("INPUT1", "in", offset=ROWS.nbytes)])
    assert status == 400 and "shrank" in body["error"], body
    status, body = _infer(daemon, [_sent("INPUT0"), _sent("INPUT1")],
                          [{"name": "OUTPUT0", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 64}}])
    assert status == 400 and "shrank" in body["error"], body
    assert os.path.getsize(path) == 8  # (not grown back by a write)
    # The file's size flips between nothing and whole while requests read it: each is answered
    # (correct data or 400), none kills the daemon.
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            os.truncate(path, 0)
            os.truncate(path, 2 * ROWS.nbytes)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        statuses = {_infer(daemon, [_from_region("INPUT0", "in"), _from_region("INPUT1", "in")])[0] for _ in range(200)}
    finally:
        stop.set()
        flipper.join()
    assert statuses <= {200, 400}
    assert daemon.proc.poll() is None
    _serves(daemon)


def test_registering_without_end_is_bounded(daemon, hc, shm_file):
    key, _ = shm_file()
    for i in range(128):  # shared_memory.MAX_REGIONS
        hc.register_system_shared_memory(f"r{i}", key, 8)
    status, body = _post(daemon, "/v2/systemsharedmemory/region/one-more/register", {"key": key, "offset": 0, "byte_size": 8})
    assert status == 429 and "128 shared memory regions are open" in body["error"]
    with pytest.raises(InferenceServerException, match="already registered"):
        hc.register_system_shared_memory("r0", key, 8)
    status, body = _post(daemon, "/v2/systemsharedmemory/region/" + "n" * 200 + "/register", {"key": key, "byte_size": 8})
    assert status in (400, 429)
    hc.unregister_system_shared_memory()
    assert _daemon_fds_on(daemon, "/dev/shm" + key) == 0  # every descriptor closed
    status, body = _post(daemon, "/v2/systemsharedmemory/region/" + "n" * 129 + "/register", {"key": key, "byte_size": 8})
    assert status == 400 and "name" in body["error"]


def test_unregistering_a_region_a_request_still_writes_into(daemon, hc, shm_file):
    """The 'held' model waits up to 5 s for a batch to fill: the output region is unregistered
    meanwhile. The request still writes its output there (it held the region from its start),
    and the region's descriptor closes once it is answered."""
    key, path = shm_file()
    hc.register_system_shared_memory("out", key, 2 * ROWS.nbytes)
    answer = {}

    def run():
        doc = {"inputs": [_sent("INPUT0"), _sent("INPUT1")], "outputs": [{"name": "OUTPUT1", "parameters": {
            "shared_memory_region": "out", "shared_memory_byte_size": 64, "shared_memory_offset": 64}}]}
        answer["reply"] = _post(daemon, "/v2/models/held/infer", doc)

    request = threading.Thread(target=run)
    request.start()
    try:
        queued = 'inferd_queue_rows{model="held",version="1"} 1.0'
        asyncio.run(eventually(lambda: queued in daemon.http_get("/metrics").decode(), 5, "the request queued"))
        assert _daemon_fds_on(daemon, path) == 1
        hc.unregister_system_shared_memory("out")
        assert hc.get_system_shared_memory_status() == []
    finally:
        request.join()
    status, body = answer["reply"]
    assert status == 200, body
    assert body["outputs"][0]["name"] == "OUTPUT1" and "data" not in body["outputs"][0]
    with open(path, "rb") as f:
        f.seek(64)
        assert f.read(64) == np.zeros((1, 16), np.int32).tobytes()  # OUTPUT1 = INPUT0 - INPUT1
    assert _daemon_fds_on(daemon, path) == 0
    status, body = _infer(daemon, [_from_region("INPUT0", "out"), _sent("INPUT1")])
    assert status == 400 and "no shared memory region" in body["error"]


def test_status_of_an_unknown_region_and_shared_memory_on_the_unix_socket(daemon, hc):
    with pytest.raises(InferenceServerException, match="no shared memory region"):
        hc.get_system_shared_memory_status("nowhere")
    hc.unregister_system_shared_memory("nowhere")  # as in Triton: no error
    inputs = [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": ROWS.tobytes()} for n in ("INPUT0", "INPUT1")]
    reply = _unix_infer(daemon, {"id": 1, "op": "infer", "model": "add_sub", "inputs": inputs, "outputs": [
        {"name": "OUTPUT0", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64}}]})
    assert reply["error"]["code"] == "invalid_argument" and "carries tensors itself" in reply["error"]["message"]


def test_an_input_region_on_the_unix_socket_is_refused_not_ignored(daemon):
    """An input naming a region that also carries `data` was inferred from the data, silently."""
    inputs = [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": ROWS.tobytes()} for n in ("INPUT0", "INPUT1")]
    inputs[0]["parameters"] = {"shared_memory_region": "r", "shared_memory_byte_size": 64}
    reply = _unix_infer(daemon, {"id": 1, "op": "infer", "model": "add_sub", "inputs": inputs})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_argument"
    assert "carries tensors itself" in reply["error"]["message"]


def _unix_infer(daemon, msg: dict) -> dict:
    payload = msgpack.packb(msg)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(daemon.socket_path)
        s.sendall(struct.pack(">I", len(payload)) + payload)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            data += s.recv(65536)
    return msgpack.unpackb(data[4:], raw=False)


def test_a_big_json_body_naming_a_region_is_refused(daemon, hc, shm_file):
    """A JSON body over max_structured_bytes is decoded in a decoder process, which has no
    regions: the input is refused there, not silently dropped."""
    key, _ = shm_file()
    hc.register_system_shared_memory("in", key, 2 * ROWS.nbytes)
    big = {"name": "IN_BYTES", "datatype": "BYTES", "shape": [1, 1], "data": ["x" * (1 << 21)]}
    region = {"name": "IN_INT32", "datatype": "INT32", "shape": [1, 16], "parameters": {
        "shared_memory_region": "in", "shared_memory_byte_size": 64}}
    status, body = _post(daemon, "/v2/models/identity_all/infer", {"inputs": [region, big]})
    assert status == 400 and "cannot name shared memory regions" in body["error"], body
    _serves(daemon)
