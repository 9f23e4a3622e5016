"""Hostile uses where two features meet, against the real daemon: an output asked both into a
shared memory region and as classification (tritonclient refuses it; a client that skips that
check gets 400 / INVALID_ARGUMENT, as from Triton's server); bad regions on a gRPC stream (each
its request's error, the stream goes on); a stream cancelled while its requests hold output
regions (the regions' descriptors are still released); a decoupled model whose streamed
response asks for more classes than allowed, or does not fit its output region (the request
ends with the error and the model is stopped); a pipeline with a decoupled or a stateful step,
and a decoupled model with sequence batching (each FAILED at load, with the reason)."""

from __future__ import annotations

import asyncio
import http.client
import os
import queue
import uuid

import make_models
import numpy as np
import orjson
import pytest
import sequence_models
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from stream_models import REPEAT, place
from tritonclient.utils import InferenceServerException
from waiting import eventually

from inferd.client import Client, InferdClientError

ROWS = np.arange(16, dtype=np.int32).reshape(1, 16)

# Yields forever: response n scores 4 classes, but response 2 scores 20,000 (more than a request
# may ask classified at once: classification.MAX_RESULTS). When stopped it notes how far it went
# (for x > 0: not for the warm-up's zeros).
WIDENING = '''
import numpy as np

class Model:
    decoupled = True
    inputs = [{"name": "x", "datatype": "INT64", "shape": [1]}]
    outputs = [{"name": "scores", "datatype": "FP32", "shape": [-1]}]

    def load(self, model_dir, config):
        self.log = model_dir / "widening.log"

    def infer(self, inputs):
        x, n = int(inputs["x"][0]), 0
        try:
            while True:
                n += 1
                yield {"scores": np.arange(20000 if n == 2 else 4, dtype=np.float32)}
        finally:
            if x:
                with open(self.log, "a") as f:
                    f.write(f"{x} closed after {n}\\n")
'''

# A decoupled model that declares [sequence_batching]: inferd's sequence queue runs a request for
# one answer, so it is refused at load rather than answering with one of its responses.
SEQUENCE_DECOUPLED = ("""
import numpy as np

class Model:
    decoupled = True
    inputs = [{"name": "x", "datatype": "INT64", "shape": [1]}, {"name": "START", "datatype": "INT32", "shape": [1]}]
    outputs = [{"name": "y", "datatype": "INT64", "shape": [1]}]

    def infer(self, inputs):
        for i in range(2):
            yield {"y": inputs["x"] + i}
""", """max_batch_size = 0
[sequence_batching]
[[sequence_batching.control_input]]
name = "START"
kind = "CONTROL_SEQUENCE_START"
int32_false_true = [0, 1]
""")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """add_sub; 'held' (add_sub waiting up to 5 s for its batch to fill); classes; widening; a
    pipeline whose step is decoupled; a decoupled model with sequence batching."""
    root = tmp_path_factory.mktemp("combo-models")
    make_models.build_add_sub(root / "add_sub" / "1" / "model.onnx")
    make_models.build_add_sub(root / "held" / "1" / "model.onnx")
    (root / "held" / "config.toml").write_text("max_batch_size = 8\nmax_queue_delay_ms = 5000\n")
    make_models.build_scores(root / "classes.onnx")
    place(root, "repeat_int32", REPEAT)
    place(root, "widening", WIDENING)
    place(root, "sequence_decoupled", *SEQUENCE_DECOUPLED)
    (root / "via_repeat").mkdir()
    (root / "via_repeat" / "config.toml").write_text('[[pipeline]]\nmodel = "repeat_int32"\n')
    sequence_models.write_python(root, "accumulate", "accumulate", corrid="TYPE_UINT64")
    (root / "via_accumulate").mkdir()
    (root / "via_accumulate" / "config.toml").write_text('[[pipeline]]\nmodel = "accumulate"\n')
    with DaemonProcess(root) as d:
        yield d


@pytest.fixture
def shm_file():
    """A file in /dev/shm of `size` bytes; its key and path."""
    made = []

    def make(size: int = 2 * ROWS.nbytes) -> tuple[str, str]:
        key = f"/inferd_combo_{uuid.uuid4().hex[:12]}"
        path = "/dev/shm" + key
        with open(path, "wb") as f:
            f.write(bytes(size))
        made.append(path)
        return key, path

    yield make
    for path in made:
        if os.path.lexists(path):
            os.unlink(path)


def grpc_address(d: DaemonProcess) -> str:
    [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


class Stream:
    def __init__(self, address: str):
        self.client = grpcclient.InferenceServerClient(address)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put(error or result))

    def take(self, n: int, timeout: float = 30) -> list:
        return [self.results.get(timeout=timeout) for _ in range(n)]

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.unregister_system_shared_memory()
        self.client.close()


@pytest.fixture
def stream(daemon):
    s = Stream(grpc_address(daemon))
    yield s
    s.close()


def _post(daemon, path: str, doc) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(*daemon.address, timeout=60)
    try:
        connection.request("POST", path, body=orjson.dumps(doc))
        response = connection.getresponse()
        return response.status, orjson.loads(response.read() or b"{}")
    finally:
        connection.close()


def _rows(module, name: str):
    tensor = module.InferInput(name, [1, 16], "INT32")
    tensor.set_data_from_numpy(ROWS)
    return tensor


def _daemon_fds_on(daemon, path: str) -> int:
    fd_dir = f"/proc/{daemon.proc.pid}/fd"
    return sum(1 for fd in os.listdir(fd_dir) if os.readlink(os.path.join(fd_dir, fd)).startswith(path))


def _serves(daemon) -> None:
    with Client(socket=daemon.socket_path) as c:
        assert c.infer("add_sub", {"INPUT0": ROWS, "INPUT1": ROWS})["OUTPUT0"].tolist() == (2 * ROWS).tolist()


def _classified_into_region(module, region: str):
    """What tritonclient refuses to build (set_shared_memory on a classification output): built anyway."""
    out = module.InferRequestedOutput("OUT_FP32")
    out.set_shared_memory(region, 1024)
    out._output.parameters["classification"].int64_param = 2
    return out


def test_an_output_both_classified_and_into_a_region_is_refused(daemon, stream, shm_file):
    key, _ = shm_file(1024)
    stream.client.register_system_shared_memory("out", key, 1024)
    scores = {"name": "scores", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.9, 0.3, 0.2]}
    status, body = _post(daemon, "/v2/models/classes/infer", {"inputs": [scores], "outputs": [{"name": "OUT_FP32", "parameters": {
        "classification": 2, "shared_memory_region": "out", "shared_memory_byte_size": 1024}}]})
    assert status == 400 and "can't set both 'shared_memory_region' and 'classification'" in body["error"]
    tensor = grpcclient.InferInput("scores", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[0.1, 0.9, 0.3, 0.2]], np.float32))
    with pytest.raises(InferenceServerException, match="can't set both") as e:
        stream.client.infer("classes", [tensor], outputs=[_classified_into_region(grpcclient, "out")])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    stream.client.async_stream_infer("classes", [tensor], outputs=[_classified_into_region(grpcclient, "out")])
    stream.client.async_stream_infer("classes", [tensor], outputs=[grpcclient.InferRequestedOutput("OUT_FP32", class_count=1)])
    refused, answered = stream.take(2)
    assert isinstance(refused, InferenceServerException) and "can't set both" in refused.message()
    assert answered.as_numpy("OUT_FP32").tolist() == [[b"0.900000:1"]]
    with open("/dev/shm" + key, "rb") as f:
        assert f.read() == bytes(1024)  # nothing was written
    _serves(daemon)


def test_bad_regions_on_a_stream_are_each_their_requests_error(daemon, stream, shm_file):
    key, _ = shm_file(2 * ROWS.nbytes)
    stream.client.register_system_shared_memory("r", key, 2 * ROWS.nbytes)
    past_end = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    past_end.set_shared_memory("r", ROWS.nbytes, offset=ROWS.nbytes + 4)
    wrong_size = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    wrong_size.set_shared_memory("r", ROWS.nbytes - 4)
    small_out = grpcclient.InferRequestedOutput("OUTPUT0")
    small_out.set_shared_memory("r", ROWS.nbytes - 1)
    unknown_out = grpcclient.InferRequestedOutput("OUTPUT0")
    unknown_out.set_shared_memory("nowhere", ROWS.nbytes)
    cases = [([past_end, _rows(grpcclient, "INPUT1")], None, "run past the end of shared memory region 'r'"),
             ([wrong_size, _rows(grpcclient, "INPUT1")], None, "shared_memory_byte_size is 60"),
             ([_rows(grpcclient, "INPUT0"), _rows(grpcclient, "INPUT1")], [small_out], "more than its shared_memory_byte_size"),
             ([_rows(grpcclient, "INPUT0"), _rows(grpcclient, "INPUT1")], [unknown_out], "no shared memory region 'nowhere'")]
    for i, (inputs, outputs, _) in enumerate(cases):
        stream.client.async_stream_infer("add_sub", inputs, outputs=outputs, request_id=str(i))
    stream.client.async_stream_infer("add_sub", [_rows(grpcclient, "INPUT0"), _rows(grpcclient, "INPUT1")], request_id="ok")
    results = stream.take(len(cases) + 1)
    errors = [r.message() for r in results if isinstance(r, InferenceServerException)]
    assert len(errors) == len(cases)
    for *_, message in cases:  # (an error carries no request id: each case's message once)
        assert sum(message in error for error in errors) == 1, (message, errors)
    [ok] = [r for r in results if not isinstance(r, InferenceServerException)]
    assert ok.as_numpy("OUTPUT0").tolist() == (2 * ROWS).tolist()
    _serves(daemon)


def test_a_cancelled_stream_releases_the_regions_its_requests_held(daemon, shm_file):
    """Requests to 'held' wait in its queue with their outputs bound for a region; the client
    cancels the stream and unregisters the region: its descriptor closes all the same."""
    key, path = shm_file(2 * ROWS.nbytes)
    s = Stream(grpc_address(daemon))
    try:
        s.client.register_system_shared_memory("held_out", key, 2 * ROWS.nbytes)
        for _ in range(3):
            out = grpcclient.InferRequestedOutput("OUTPUT0")
            out.set_shared_memory("held_out", ROWS.nbytes)
            s.client.async_stream_infer("held", [_rows(grpcclient, "INPUT0"), _rows(grpcclient, "INPUT1")], outputs=[out])
        queued = 'inferd_queue_rows{model="held",version="1"} 3.0'
        asyncio.run(eventually(lambda: queued in daemon.http_get("/metrics").decode(), 5, "the requests queued"))
        s.client.unregister_system_shared_memory("held_out")
        assert _daemon_fds_on(daemon, path) == 1  # held by the requests
    finally:
        s.close(cancel=True)
    asyncio.run(eventually(lambda: _daemon_fds_on(daemon, path) == 0, 10, "the region's descriptor closed"))
    _serves(daemon)


def test_a_streamed_response_with_too_many_classes_ends_the_stream(daemon, stream):
    """The first response is classified; the second would be 20,000 strings: the stream ends
    with that error, the model's generator is closed, and the stream serves on."""
    x = grpcclient.InferInput("x", [1], "INT64")
    x.set_data_from_numpy(np.array([7], np.int64))
    stream.client.async_stream_infer("widening", [x], outputs=[grpcclient.InferRequestedOutput("scores", class_count=20000)],
                                     request_id="w")
    first, error = stream.take(2)
    assert first.as_numpy("scores").tolist() == [b"3.000000:3", b"2.000000:2", b"1.000000:1", b"0.000000:0"]
    assert isinstance(error, InferenceServerException) and "at most 16384" in error.message()
    log = daemon.models / "widening" / "widening.log"
    asyncio.run(eventually(lambda: log.exists() and "7 closed after" in log.read_text(), 10, "the model stopped"))
    stream.client.async_stream_infer("repeat_int32", [_int32("IN", [4]), _int32("DELAY", [0], np.uint32),
                                                      _int32("WAIT", [0], np.uint32)])
    [after] = stream.take(1)
    assert after.as_numpy("OUT").tolist() == [4]
    with Client(socket=daemon.socket_path) as c, pytest.raises(InferdClientError, match="at most 16384") as e:
        list(c.stream("widening", {"x": np.array([1], np.int64)}, outputs=[{"name": "scores", "parameters": {"classification": 20000}}]))
    assert e.value.code == "invalid_argument"


def test_a_streamed_response_too_big_for_its_region_ends_the_request(daemon, stream, shm_file):
    """A decoupled model's responses go into the region one after another; the second does not
    fit: the request ends with that error, its model is stopped, the region is let go, and the
    stream serves on."""
    key, path = shm_file(64)
    stream.client.register_system_shared_memory("w", key, 64)
    x = grpcclient.InferInput("x", [1], "INT64")
    x.set_data_from_numpy(np.array([8], np.int64))
    out = grpcclient.InferRequestedOutput("scores")
    out.set_shared_memory("w", 64)
    stream.client.async_stream_infer("widening", [x], outputs=[out], request_id="big")
    first, error = stream.take(2)
    assert first.get_response().raw_output_contents == [b""] and list(first.get_response().outputs[0].shape) == [4]
    with open(path, "rb") as f:
        assert np.frombuffer(f.read(16), np.float32).tolist() == [0, 1, 2, 3]
    assert isinstance(error, InferenceServerException)
    assert "has 80000 bytes, more than its shared_memory_byte_size (64)" in error.message()
    log = daemon.models / "widening" / "widening.log"
    asyncio.run(eventually(lambda: log.exists() and "8 closed after" in log.read_text(), 10, "the model stopped"))
    stream.client.unregister_system_shared_memory("w")
    asyncio.run(eventually(lambda: _daemon_fds_on(daemon, path) == 0, 10, "the region's descriptor closed"))
    stream.client.async_stream_infer("add_sub", [_rows(grpcclient, "INPUT0"), _rows(grpcclient, "INPUT1")])
    [after] = stream.take(1)
    assert after.as_numpy("OUTPUT0").tolist() == (2 * ROWS).tolist()


def _int32(name: str, values, dtype=np.int32):
    array = np.array(values, dtype)
    tensor = grpcclient.InferInput(name, list(array.shape), "INT32" if dtype == np.int32 else "UINT32")
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.mark.parametrize("pipeline, step, why", [("via_repeat", "repeat_int32", "is decoupled (0..N responses per request)"),
                                                  ("via_accumulate", "accumulate", "batches sequences ([sequence_batching])")])
def test_a_pipeline_with_a_decoupled_or_stateful_step_fails_to_load_with_the_reason(daemon, pipeline, step, why):
    """Its steps are requests that await one answer each, outside any sequence: such a step
    could never serve, so the pipeline says why at load instead of failing every request."""
    with Client(socket=daemon.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
        assert index[pipeline]["state"] == "FAILED"
        assert f"step 1 ({step!r}) {why}" in index[pipeline]["reason"] or f"step model {step!r} {why}" in index[pipeline]["reason"]
        with pytest.raises(InferdClientError, match="FAILED"):
            c.infer(pipeline, {"IN": np.array([1], np.int32)})
    _serves(daemon)


def test_a_decoupled_model_with_sequence_batching_fails_to_load_with_the_reason(daemon):
    with Client(socket=daemon.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
        assert index["sequence_decoupled"]["state"] == "FAILED"
        assert "a decoupled model cannot have [sequence_batching]" in index["sequence_decoupled"]["reason"]
        with pytest.raises(InferdClientError, match="FAILED"):
            list(c.stream("sequence_decoupled", {"x": np.array([5], np.int64)}))
    _serves(daemon)


@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
@pytest.mark.parametrize("parameter", [{"classification": 2}, {"shared_memory_region": "r", "shared_memory_byte_size": 64},
                                       {"binary_data": True}])
def test_generate_refuses_a_tensors_parameters_it_cannot_apply(daemon, endpoint, parameter):
    """generate answers every output as JSON data: classification, a region or binary data
    asked there would do nothing, so they are refused (400) rather than ignored."""
    status, body = _post(daemon, f"/v2/models/repeat_int32/{endpoint}",
                         {"IN": [1], "DELAY": [0], "WAIT": 0, "parameters": parameter})
    assert status == 400 and "which generate does not take" in body["error"] and "use /infer" in body["error"]
    connection = http.client.HTTPConnection(*daemon.address, timeout=60)
    try:  # (other parameters are accepted, as by Triton, which hands them to the model)
        connection.request("POST", f"/v2/models/repeat_int32/{endpoint}",
                           body=orjson.dumps({"IN": [1], "DELAY": [0], "WAIT": 0, "parameters": {"t": 1}}))
        response = connection.getresponse()
        assert response.status == 200 and b'"OUT":1' in response.read()
    finally:
        connection.close()


def test_unix_socket_stream_refuses_an_output_into_a_region(daemon):
    """The socket carries tensors itself (a stream as an infer): refused, not written nowhere."""
    with Client(socket=daemon.socket_path) as c:
        with pytest.raises(InferdClientError, match="carries tensors itself") as e:
            list(c.stream("repeat_int32", {"IN": np.array([1], np.int32), "DELAY": np.zeros(1, np.uint32),
                                           "WAIT": np.zeros(1, np.uint32)},
                          outputs=[{"name": "OUT", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]))
        assert e.value.code == "invalid_argument"
        assert [r["OUT"].tolist() for r in c.stream("repeat_int32", {"IN": np.array([2], np.int32), "DELAY": np.zeros(1, np.uint32),
                                                                     "WAIT": np.zeros(1, np.uint32)})] == [[2]]
