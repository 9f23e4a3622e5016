"""A shared-memory input is read when its batch is stacked (common.deferred.FileSlice), straight
into the worker's batch region, not when the request arrives. So between the two a client may
shrink its file or unregister its region: the shrunk file fails that request alone (400, no
SIGBUS, the other requests of the batch run), an unregistered region is still read (its
descriptor stays open until the request is done). Both through the worker's shared memory and
through the socket fallback (`shared_memory = false`), and batches that mix shared-memory and
sent inputs from concurrent HTTP and gRPC clients come out right; so do a pipeline's steps, a
batch run again after its worker died, a sequence batch's idle slots, and gRPC streams (a
stream request holds its regions until it is answered)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import os
import queue
import re
import threading
import uuid

import make_models
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from sequence_models import write_onnx_controls
from waiting import eventually

WIDTH = 2048  # 8 KiB an INT32 row: above backends.shm.INLINE_BYTES, stacked into the batch region
MODELS = {  # name: config.toml
    "wide": "max_batch_size = 8\nmax_queue_delay_ms = 400\n",
    "wide_pipe": "max_batch_size = 8\nmax_queue_delay_ms = 400\nshared_memory = false\n",
    "held": "max_batch_size = 8\nmax_queue_delay_ms = 30000\n",  # (a batch goes when full: see _fill)
    "held_pipe": "max_batch_size = 8\nmax_queue_delay_ms = 30000\nshared_memory = false\n",
}
# A pipeline: INPUT0 + INPUT1, then (that) + INPUT1 and (that) - INPUT1 (INPUT1 read twice).
CHAIN = '[[pipeline]]\nmodel = "held"\n[[pipeline]]\nmodel = "wide_pipe"\ninputs = { INPUT0 = "held.OUTPUT0" }\n'

DIES_ONCE = f'''
import os

class Model:
    inputs = [{{"name": n, "datatype": "INT32", "shape": [-1, {WIDTH}]}} for n in ("INPUT0", "INPUT1")]
    outputs = [{{"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, {WIDTH}]}}]

    def infer(self, inputs):
        if inputs["INPUT0"][0, 0] == 100000 and not os.path.exists("MARKER"):  # (rows(1): not at load)
            open("MARKER", "w").close()
            os._exit(3)
        return {{"OUTPUT0": inputs["INPUT0"] + inputs["INPUT1"]}}
'''


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("shm-stacking")
    for name, config in MODELS.items():
        make_models.build_add_sub(root / name / "1" / "model.onnx", width=WIDTH)
        (root / name / "config.toml").write_text(config)
    (root / "chain").mkdir()
    (root / "chain" / "config.toml").write_text(CHAIN)
    (root / "dies_once" / "1").mkdir(parents=True)  # its first worker dies in its first batch
    (root / "dies_once" / "1" / "model.py").write_text(DIES_ONCE.replace("MARKER", str(root / "died")))
    (root / "dies_once" / "config.toml").write_text("max_batch_size = 8\n")
    write_onnx_controls(root, "controls_direct")  # OUTPUT = INPUT + 1000 START + 100 END + 10 READY
    with DaemonProcess(root) as d:
        yield d


@pytest.fixture
def hc(daemon):
    c = httpclient.InferenceServerClient(daemon.url[len("http://"):])
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def files():
    """make(rows) -> (key, path) of a /dev/shm file holding those INT32 rows."""
    made = []

    def make(data: np.ndarray) -> tuple[str, str]:
        key = f"/inferd_stacking_{uuid.uuid4().hex[:12]}"
        path = "/dev/shm" + key
        with open(path, "wb") as f:
            f.write(data.astype(np.int32).tobytes())
        made.append(path)
        return key, path

    yield make
    for path in made:
        if os.path.lexists(path):
            os.unlink(path)


def rows(seed: int, n: int = 1) -> np.ndarray:
    return (np.arange(n * WIDTH, dtype=np.int32).reshape(n, WIDTH) * 3 + seed * 100_000) % 1_000_003


def _from_region(name: str, region: str, n: int = 1, offset: int = 0) -> dict:
    return {"name": name, "datatype": "INT32", "shape": [n, WIDTH], "parameters": {
        "shared_memory_region": region, "shared_memory_byte_size": n * WIDTH * 4, "shared_memory_offset": offset}}


def _sent(name: str, data: np.ndarray) -> dict:
    return {"name": name, "datatype": "INT32", "shape": list(data.shape), "data": data.reshape(-1).tolist()}


def _infer(daemon, model: str, inputs: list) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(*daemon.address, timeout=60)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=orjson.dumps({"inputs": inputs}))
        response = connection.getresponse()
        return response.status, orjson.loads(response.read() or b"{}")
    finally:
        connection.close()


def _outputs(body: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"], np.int32).reshape(o["shape"]) for o in body["outputs"]}


def _queued(daemon, model: str, n: int) -> None:
    queued = f'inferd_queue_rows{{model="{model}",version="1"}} {float(n)}'
    asyncio.run(eventually(lambda: queued in daemon.http_get("/metrics").decode(), 10, f"{n} rows queued"))


def _fill(pool, daemon, model: str, n: int) -> concurrent.futures.Future:
    """A request of `n` rows sent, to fill a held model's batch (8 rows) so that it goes now."""
    a, b = rows(90, n), rows(91, n)

    def run():
        status, body = _infer(daemon, model, [_sent("INPUT0", a), _sent("INPUT1", b)])
        assert status == 200, body
        np.testing.assert_array_equal(_outputs(body)["OUTPUT0"], a + b)
    return pool.submit(run)


def _fds_on(daemon, path: str) -> int:
    fd_dir = f"/proc/{daemon.proc.pid}/fd"
    return sum(1 for fd in os.listdir(fd_dir) if os.readlink(os.path.join(fd_dir, fd)) == path)


def _batches(daemon, model: str) -> tuple[float, float]:
    """(batches run, rows in them) of the model, from /metrics."""
    text = daemon.http_get("/metrics").decode()
    found = {kind: float(m.group(1)) for kind in ("count", "sum")
             if (m := re.search(rf'inferd_batch_size_{kind}{{model="{model}",version="1"}} (\S+)', text))}
    return found.get("count", 0.0), found.get("sum", 0.0)


@pytest.mark.parametrize("model", ["held", "held_pipe"])
def test_a_file_shrunk_while_its_request_is_queued_fails_that_request_alone(daemon, hc, files, model):
    key, path = files(np.concatenate([rows(1), rows(2)]))
    hc.register_system_shared_memory("in", key, 2 * WIDTH * 4)
    pool = concurrent.futures.ThreadPoolExecutor(3)
    try:
        mine = pool.submit(_infer, daemon, model, [_from_region("INPUT0", "in"), _from_region("INPUT1", "in", offset=WIDTH * 4)])
        _queued(daemon, model, 1)  # (read when its batch is stacked, not yet)
        other = pool.submit(_infer, daemon, model, [_sent("INPUT0", rows(3, 2)), _sent("INPUT1", rows(4, 2))])
        _queued(daemon, model, 3)
        os.truncate(path, 100)
        filler = _fill(pool, daemon, model, 5)
        status, body = mine.result()
        assert status == 400 and "shrank" in body["error"], body
        _fill(pool, daemon, model, 1).result()  # (the rest of the batch is queued again: 7 rows)
        filler.result()
        status, body = other.result()  # the same batch's other request runs, its data intact
        assert status == 200, body
        out = _outputs(body)
        np.testing.assert_array_equal(out["OUTPUT0"], rows(3, 2) + rows(4, 2))
        np.testing.assert_array_equal(out["OUTPUT1"], rows(3, 2) - rows(4, 2))
    finally:
        pool.shutdown()
    assert daemon.proc.poll() is None
    status, body = _infer(daemon, "wide", [_sent("INPUT0", rows(5)), _sent("INPUT1", rows(6))])
    assert status == 200 and (_outputs(body)["OUTPUT0"] == rows(5) + rows(6)).all()
    hc.unregister_system_shared_memory("in")
    asyncio.run(eventually(lambda: _fds_on(daemon, path) == 0, 10, "the failed request let go of the region"))


@pytest.mark.parametrize("model", ["held", "held_pipe"])
def test_unregistering_a_region_a_queued_request_reads_from(daemon, hc, files, model):
    """The region is unregistered while the request that names it waits for its batch: its data
    is still read (the descriptor stays open while the request holds it), then closed."""
    key, path = files(np.concatenate([rows(7), rows(8)]))
    hc.register_system_shared_memory("in", key, 2 * WIDTH * 4)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        mine = pool.submit(_infer, daemon, model, [_from_region("INPUT0", "in"), _from_region("INPUT1", "in", offset=WIDTH * 4)])
        _queued(daemon, model, 1)
        hc.unregister_system_shared_memory("in")
        assert hc.get_system_shared_memory_status() == []
        assert _fds_on(daemon, path) == 1  # held by the queued request
        _fill(pool, daemon, model, 7).result()
        status, body = mine.result()
    assert status == 200, body
    out = _outputs(body)
    np.testing.assert_array_equal(out["OUTPUT0"], rows(7) + rows(8))
    np.testing.assert_array_equal(out["OUTPUT1"], rows(7) - rows(8))
    asyncio.run(eventually(lambda: _fds_on(daemon, path) == 0, 10, "the descriptor closed"))
    status, body = _infer(daemon, model, [_from_region("INPUT0", "in"), _sent("INPUT1", rows(8))])
    assert status == 400 and "no shared memory region" in body["error"]


def _grpc_infer(address: str, model: str, region: str, data0: np.ndarray, data1: np.ndarray, offset: int):
    """INPUT0 from the region at `offset`, INPUT1 sent: OUTPUT0 back."""
    with grpcclient.InferenceServerClient(address) as client:
        inputs = [grpcclient.InferInput("INPUT0", list(data0.shape), "INT32"),
                  grpcclient.InferInput("INPUT1", list(data1.shape), "INT32")]
        inputs[0].set_shared_memory(region, data0.nbytes, offset)
        inputs[1].set_data_from_numpy(data1)
        return client.infer(model, inputs).as_numpy("OUTPUT0")


@pytest.mark.parametrize("model", ["wide", "wide_pipe"])
def test_batches_mixing_shared_memory_and_sent_inputs_from_concurrent_clients(daemon, hc, files, model):
    """Twelve concurrent requests (1 or 2 rows each), over HTTP and gRPC: inputs from regions
    (one region per client, several inputs at offsets in it), sent, or both. Every answer
    is its own request's, and the requests ran in batches of several."""
    cases = []
    for i in range(12):
        n = 1 + i % 2
        a, b = rows(10 + i, n), rows(50 + i, n)
        key, _ = files(np.concatenate([b, a]))  # INPUT1's rows first: INPUT0 is at an offset
        hc.register_system_shared_memory(f"c{i}", key, 2 * a.nbytes)
        cases.append((i, n, a, b))
    [listening] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    before = _batches(daemon, model)

    def run(case):
        i, n, a, b = case
        if i % 4 == 3:
            return _grpc_infer(listening["address"], model, f"c{i}", a, b, b.nbytes), None
        shared = _from_region("INPUT0", f"c{i}", n, offset=b.nbytes)
        inputs = {0: [shared, _from_region("INPUT1", f"c{i}", n)], 1: [shared, _sent("INPUT1", b)],
                  2: [_sent("INPUT0", a), _sent("INPUT1", b)]}[i % 4]
        status, body = _infer(daemon, model, inputs)
        assert status == 200, body
        out = _outputs(body)
        return out["OUTPUT0"], out["OUTPUT1"]

    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(run, cases))
    for (i, _, a, b), (sum_, difference) in zip(cases, answers, strict=True):
        np.testing.assert_array_equal(sum_, a + b, err_msg=f"request {i}")
        if difference is not None:
            np.testing.assert_array_equal(difference, a - b, err_msg=f"request {i}")
    batches, batch_rows = (x - y for x, y in zip(_batches(daemon, model), before, strict=True))
    assert batch_rows == sum(n for _, n, _, _ in cases)
    assert batches < len(cases), "no batch held more than one request"


def test_the_region_is_let_go_when_requests_fail_before_their_batch(daemon, hc, files):
    """Requests whose shared-memory inputs are read but which fail elsewhere (an unknown input,
    a wrong model) do not keep the region's descriptor open after it is unregistered."""
    key, path = files(np.concatenate([rows(1), rows(2)]))
    hc.register_system_shared_memory("in", key, 2 * WIDTH * 4)
    for model, extra in (("wide", [_sent("EXTRA", rows(3))]), ("no_such_model", [])):
        status, body = _infer(daemon, model, [_from_region("INPUT0", "in"), _from_region("INPUT1", "in"), *extra])
        assert status in (400, 404), body
    hc.unregister_system_shared_memory("in")
    asyncio.run(eventually(lambda: _fds_on(daemon, path) == 0, 10, "the descriptor closed"))


def test_a_file_flipping_size_under_concurrent_requests(daemon, hc, files):
    """Requests from a region whose file flips between empty and whole while they are read
    (at decode and at stacking): each is answered 200 or 400, and the daemon lives."""
    data = np.concatenate([rows(1), rows(2)])
    key, path = files(data)
    hc.register_system_shared_memory("flip", key, data.nbytes)
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            os.truncate(path, 0)
            os.truncate(path, data.nbytes)
            with open(path, "r+b") as f:
                f.write(data.tobytes())

    def one(_):  # (a 200's data may be torn: the client rewrites its file under the read)
        return _infer(daemon, "wide", [_from_region("INPUT0", "flip"), _from_region("INPUT1", "flip", offset=WIDTH * 4)])[0]

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = set(pool.map(one, range(40)))
    finally:
        stop.set()
        flipper.join()
    assert statuses <= {200, 400}, statuses
    assert daemon.proc.poll() is None
    status, body = _infer(daemon, "wide", [_sent("INPUT0", rows(5)), _sent("INPUT1", rows(6))])
    assert status == 200 and (_outputs(body)["OUTPUT0"] == rows(5) + rows(6)).all()


def test_a_pipeline_reads_its_shared_memory_inputs_in_its_steps(daemon, hc, files):
    """A pipeline's inputs from a region go on to its steps unread; each step's batch reads
    them (INPUT1 twice), and a file shrunk meanwhile is that step's clear error."""
    key, path = files(np.concatenate([rows(1), rows(2)]))
    hc.register_system_shared_memory("in", key, 2 * WIDTH * 4)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        mine = pool.submit(_infer, daemon, "chain", [_from_region("INPUT0", "in"), _from_region("INPUT1", "in", offset=WIDTH * 4)])
        _queued(daemon, "held", 1)
        _fill(pool, daemon, "held", 7).result()
        status, body = mine.result()
    assert status == 200, body
    out = _outputs(body)
    np.testing.assert_array_equal(out["OUTPUT0"], rows(1) + 2 * rows(2))
    np.testing.assert_array_equal(out["OUTPUT1"], rows(1))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # shrunk while step 1 waits for its batch
        mine = pool.submit(_infer, daemon, "chain", [_from_region("INPUT0", "in"), _from_region("INPUT1", "in", offset=WIDTH * 4)])
        _queued(daemon, "held", 1)
        os.truncate(path, 100)
        filler = _fill(pool, daemon, "held", 7)
        status, body = mine.result()
        _fill(pool, daemon, "held", 1).result()  # (the rest of the batch is queued again: 7 rows)
        filler.result()
    assert status == 400 and "step 1" in body["error"] and "shrank" in body["error"], body


def test_a_grpc_stream_request_reads_its_region_when_stacked_and_then_lets_it_go(daemon, hc, files):
    """ModelStreamInfer's requests hold their input regions as ModelInfer's do: the data is read
    into the batch, the descriptor closes once the request is answered, even after the region
    was unregistered while the stream was open; the stream serves on."""
    key, path = files(np.concatenate([rows(1), rows(2)]))
    hc.register_system_shared_memory("in", key, 2 * WIDTH * 4)
    [listening] = [e for e in daemon.events("listening") if e["frontend"] == "grpc"]
    results = queue.Queue()
    with grpcclient.InferenceServerClient(listening["address"]) as client:
        client.start_stream(callback=lambda result, error: results.put(error or result))
        shared = grpcclient.InferInput("INPUT0", [1, WIDTH], "INT32")
        shared.set_shared_memory("in", WIDTH * 4)
        sent = grpcclient.InferInput("INPUT1", [1, WIDTH], "INT32")
        sent.set_data_from_numpy(rows(2))
        client.async_stream_infer("wide", [shared, sent], request_id="shm")
        np.testing.assert_array_equal(results.get(timeout=30).as_numpy("OUTPUT0"), rows(1) + rows(2))
        hc.unregister_system_shared_memory("in")
        asyncio.run(eventually(lambda: _fds_on(daemon, path) == 0, 10, "the descriptor closed"))
        client.async_stream_infer("wide", [shared, sent], request_id="gone")
        error = results.get(timeout=30)
        assert "no shared memory region" in str(error) and "internal" not in str(error).lower(), error
        plain = grpcclient.InferInput("INPUT0", [1, WIDTH], "INT32")
        plain.set_data_from_numpy(rows(1))
        client.async_stream_infer("wide", [plain, sent], request_id="plain")
        np.testing.assert_array_equal(results.get(timeout=30).as_numpy("OUTPUT0"), rows(1) + rows(2))
        client.stop_stream()


def test_a_batch_whose_worker_died_reads_its_shared_memory_inputs_again(daemon, hc, files):
    """The worker dies running the batch; the batch runs again on its replacement, stacked
    again from the same files (still held), with the same data."""
    key, _ = files(np.concatenate([rows(1), rows(2)]))
    hc.register_system_shared_memory("in", key, 2 * WIDTH * 4)
    status, body = _infer(daemon, "dies_once", [_from_region("INPUT0", "in"), _from_region("INPUT1", "in", offset=WIDTH * 4)])
    assert status == 200, body
    np.testing.assert_array_equal(_outputs(body)["OUTPUT0"], rows(1) + rows(2))
    assert (daemon.models / "died").exists()  # (it did die once)
    assert any(e.get("model") == "dies_once" for e in daemon.events("a worker died running a batch; running it again"))


def test_a_sequence_batch_pads_idle_slots_beside_a_shared_memory_input(daemon, hc, files):
    """A stateful model (direct strategy): sequence 302's request runs in slot 1 beside an idle
    slot 0, whose row is made like its INPUT, which comes from a region (not read to be copied:
    only its shape and datatype)."""
    key, _ = files(np.array([7], np.int32))
    hc.register_system_shared_memory("seq", key, 4)

    def infer(sid, value=None, **flags):
        x = httpclient.InferInput("INPUT", [1, 1], "INT32")
        if value is None:
            x.set_shared_memory("seq", 4)
        else:
            x.set_data_from_numpy(np.full((1, 1), value, np.int32))
        return int(hc.infer("controls_direct", [x], sequence_id=sid, **flags).as_numpy("OUTPUT")[0][0])

    assert infer(301, 5, sequence_start=True) == 5 + 1000 + 10
    assert infer(302, sequence_start=True) == 7 + 1000 + 10
    assert infer(301, 1, sequence_end=True) == 1 + 100 + 10
    assert infer(302) == 7 + 10  # (slot 0 idle: padded)
    assert infer(302, sequence_end=True) == 7 + 100 + 10
