"""Where the protocol features meet, through real clients: system shared memory on gRPC streams
(tritonclient's start_stream with regions from tritonclient.utils.shared_memory, and
perf_analyzer --streaming --shared-memory system), for ordinary and decoupled models;
classification of each response a decoupled model streams (gRPC, the Unix socket); one output
classified and another written into a region in the same request (HTTP and gRPC ModelInfer,
and on a stream)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import uuid

import make_models
import numpy as np
import pytest
import sequence_models
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from daemon_process import DaemonProcess
from stream_models import REPEAT, place
from tritonclient.utils import InferenceServerException

from inferd.client import Client

# A decoupled classifier: n responses, response i scoring class i % 4 highest (1.0), the next
# one second (0.5).
STREAMED_SCORES = '''
import numpy as np

class Model:
    decoupled = True
    inputs = [{"name": "n", "datatype": "INT32", "shape": [1]}]
    outputs = [{"name": "scores", "datatype": "FP32", "shape": [4]}]

    def infer(self, inputs):
        for i in range(int(inputs["n"][0])):
            scores = np.zeros(4, np.float32)
            scores[i % 4], scores[(i + 1) % 4] = 1.0, 0.5
            yield {"scores": scores}
'''
STREAMED_CONFIG = """[[outputs]]
name = "scores"
datatype = "FP32"
shape = [4]
label_filename = "labels.txt"
"""
CLASSES_CONFIG = """max_batch_size = 8
[[outputs]]
name = "OUT_FP32"
datatype = "FP32"
shape = [-1, -1]
label_filename = "labels.txt"
"""
LABELS = "cat\ndog\nbird\nfish\n"
SCORES = np.array([[0.1, 0.7, 0.05, 0.9], [5.5, -1.0, 0.25, 0.0]], np.float32)
TOP2 = [[b"0.900000:3:fish", b"0.700000:1:dog"], [b"5.500000:0:cat", b"0.250000:2:bird"]]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_models.build_add_sub(root / "add_sub" / "1" / "model.onnx")
    make_models.build_scores(root / "classes" / "1" / "model.onnx")
    (root / "classes" / "config.toml").write_text(CLASSES_CONFIG)
    (root / "classes" / "labels.txt").write_text(LABELS)
    place(root, "repeat_int32", REPEAT)
    place(root, "streamed_scores", STREAMED_SCORES, STREAMED_CONFIG)
    sequence_models.write_python(root, "accumulate", "accumulate", corrid="TYPE_UINT64")
    (root / "streamed_scores" / "labels.txt").write_text(LABELS)
    with DaemonProcess(root) as d:
        yield d


def grpc_address(d: DaemonProcess) -> str:
    [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
    return event["address"]


@pytest.fixture
def regions():
    """make(size) -> (handle, name, key) of a fresh region; all destroyed after the test."""
    made = []

    def make(size: int):
        tag = uuid.uuid4().hex[:12]
        handle = shm.create_shared_memory_region(f"c{tag}", f"/inferd_combo_{tag}", size)
        made.append(handle)
        return handle, f"c{tag}", f"/inferd_combo_{tag}"

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


class Stream:
    """tritonclient.grpc's stream; the callback's results in a queue."""

    def __init__(self, address: str):
        self.client = grpcclient.InferenceServerClient(address)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put(error or result))

    def take(self, n: int, timeout: float = 30) -> list:
        return [self.results.get(timeout=timeout) for _ in range(n)]

    def nothing_more(self, wait: float = 0.5) -> bool:
        try:
            self.results.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.client.stop_stream()
        self.client.unregister_system_shared_memory()
        self.client.close()


@pytest.fixture
def stream(served):
    s = Stream(grpc_address(served))
    yield s
    s.close()


def final(result) -> bool:
    return result.get_response().parameters["triton_final_response"].bool_param


def int_input(module, name: str, array: np.ndarray):
    tensor = module.InferInput(name, list(array.shape), "INT32" if array.dtype == np.int32 else "UINT32")
    tensor.set_data_from_numpy(array)
    return tensor


# -- shared memory on gRPC streams -------------------------------------------------------------

def test_stream_reads_inputs_from_and_writes_outputs_into_regions(stream, regions):
    """simple_grpc_shm_client.py's requests, sent on a stream: several of them, each its own
    output region, answered with empty raw contents and the sums in the regions."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, np.int32)
    size = a.nbytes
    ip, ip_name, ip_key = regions(2 * size)
    shm.set_shared_memory_region(ip, [a, b])
    stream.client.register_system_shared_memory(ip_name, ip_key, 2 * size)
    outs = []
    for i in range(3):
        op, op_name, op_key = regions(2 * size)
        stream.client.register_system_shared_memory(op_name, op_key, 2 * size)
        outs.append(op)
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_shared_memory(ip_name, size)
        inputs[1].set_shared_memory(ip_name, size, offset=size)
        outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory(op_name, size)
        if i == 2:  # the last request takes OUTPUT1 as data
            outputs[1] = grpcclient.InferRequestedOutput("OUTPUT1")
        else:
            outputs[1].set_shared_memory(op_name, size, offset=size)
        stream.client.async_stream_infer("add_sub", inputs, outputs=outputs, request_id=f"s{i}")
    results = sorted(stream.take(3), key=lambda r: r.get_response().id)
    for i, (result, op) in enumerate(zip(results, outs)):
        assert not isinstance(result, InferenceServerException), result
        response = result.get_response()
        assert final(result) and [list(o.shape) for o in response.outputs] == [[1, 16], [1, 16]]
        assert response.raw_output_contents[0] == b""
        np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.int32, [1, 16]), a + b)
        if i < 2:
            assert response.raw_output_contents[1] == b""
            np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.int32, [1, 16], offset=size), a - b)
        else:
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert stream.nothing_more()


def test_decoupled_model_on_a_stream_reads_its_inputs_from_a_region(stream, regions):
    values = np.array([5, 6, 7], np.int32)
    ip, ip_name, ip_key = regions(values.nbytes)
    shm.set_shared_memory_region(ip, [values])
    stream.client.register_system_shared_memory(ip_name, ip_key, values.nbytes)
    tensor = grpcclient.InferInput("IN", [3], "INT32")
    tensor.set_shared_memory(ip_name, values.nbytes)
    inputs = [tensor, int_input(grpcclient, "DELAY", np.zeros(3, np.uint32)),
              int_input(grpcclient, "WAIT", np.zeros(1, np.uint32))]
    stream.client.async_stream_infer("repeat_int32", inputs, outputs=[grpcclient.InferRequestedOutput("OUT")],
                                     request_id="r")
    results = stream.take(3)
    assert [int(r.as_numpy("OUT")[0]) for r in results] == [5, 6, 7]
    assert stream.nothing_more()


def test_decoupled_model_writes_each_response_into_the_region(stream, regions):
    """As Triton does (perf_analyzer --streaming --shared-memory system relies on it): every
    response goes into the one region, just before it is sent; after the last, it holds the last."""
    op, op_name, op_key = regions(64)
    stream.client.register_system_shared_memory(op_name, op_key, 64)
    for values in ([1, 2, 3], [9]):
        out = grpcclient.InferRequestedOutput("OUT")
        out.set_shared_memory(op_name, 4, offset=8)
        inputs = [int_input(grpcclient, "IN", np.array(values, np.int32)),
                  int_input(grpcclient, "DELAY", np.zeros(len(values), np.uint32)),
                  int_input(grpcclient, "WAIT", np.zeros(1, np.uint32))]
        stream.client.async_stream_infer("repeat_int32", inputs, outputs=[out], request_id="shm",
                                         enable_empty_final_response=True)
        results = stream.take(len(values) + 1)
        assert [final(r) for r in results] == [False] * len(values) + [True]
        for r in results[:-1]:
            assert [list(o.shape) for o in r.get_response().outputs] == [[1]] and r.get_response().raw_output_contents == [b""]
        assert int(shm.get_contents_as_numpy(op, np.int32, [1], offset=8)[0]) == values[-1]
    assert stream.nothing_more()


def test_stream_input_naming_an_unknown_region_is_its_request_error(stream):
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    tensor.set_shared_memory("no_such_region", 64)
    other = int_input(grpcclient, "INPUT1", np.ones((1, 16), np.int32))
    stream.client.async_stream_infer("add_sub", [tensor, other], request_id="bad")
    stream.client.async_stream_infer("add_sub", [int_input(grpcclient, "INPUT0", np.ones((1, 16), np.int32)), other],
                                     request_id="good")
    bad, good = stream.take(2)
    assert isinstance(bad, InferenceServerException) and "no shared memory region 'no_such_region'" in bad.message()
    assert good.as_numpy("OUTPUT0").tolist() == [[2] * 16]


def test_a_sequence_on_a_stream_with_its_inputs_and_outputs_in_regions(stream, regions):
    """Sequence batching, a gRPC stream and shared memory together (as a stateful client
    feeding frames through regions would): the running sum of sequence 42, each request's input
    read from its place in one region, each answer written into a region of its own; the END
    answer adds the correlation id (the accumulate model)."""
    values = np.array([3, 4, 5], np.int32)
    ip, ip_name, ip_key = regions(values.nbytes)
    shm.set_shared_memory_region(ip, [values])
    stream.client.register_system_shared_memory(ip_name, ip_key, values.nbytes)
    outs = []
    for i in range(3):
        op, op_name, op_key = regions(4)
        stream.client.register_system_shared_memory(op_name, op_key, 4)
        outs.append(op)
        tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_shared_memory(ip_name, 4, offset=4 * i)
        out = grpcclient.InferRequestedOutput("OUTPUT")
        out.set_shared_memory(op_name, 4)
        stream.client.async_stream_infer("accumulate", [tensor], outputs=[out], request_id=f"q{i}", sequence_id=42,
                                         sequence_start=i == 0, sequence_end=i == 2)
    results = stream.take(3)
    assert [r.get_response().id for r in results] == ["q0", "q1", "q2"]
    assert all(r.get_response().raw_output_contents == [b""] for r in results)
    assert [int(shm.get_contents_as_numpy(op, np.int32, [1, 1])[0, 0]) for op in outs] == [3, 7, 12 + 42]


# -- classification of streamed responses ------------------------------------------------------

def test_each_response_of_a_decoupled_model_is_classified(stream):
    n = grpcclient.InferInput("n", [1], "INT32")
    n.set_data_from_numpy(np.array([3], np.int32))
    stream.client.async_stream_infer("streamed_scores", [n], outputs=[grpcclient.InferRequestedOutput("scores", class_count=2)],
                                     request_id="k", enable_empty_final_response=True)
    results = stream.take(4)
    assert [final(r) for r in results] == [False, False, False, True]
    assert [r.as_numpy("scores").tolist() for r in results[:3]] == [
        [b"1.000000:0:cat", b"0.500000:1:dog"], [b"1.000000:1:dog", b"0.500000:2:bird"],
        [b"1.000000:2:bird", b"0.500000:3:fish"]]
    assert results[0].get_output("scores").datatype == "BYTES"
    assert not results[3].get_response().outputs  # the empty final response is just that
    assert stream.nothing_more()


def test_classification_of_an_ordinary_model_on_a_stream(stream):
    tensor = grpcclient.InferInput("scores", list(SCORES.shape), "FP32")
    tensor.set_data_from_numpy(SCORES)
    stream.client.async_stream_infer("classes", [tensor], outputs=[grpcclient.InferRequestedOutput("OUT_FP32", class_count=2)])
    [result] = stream.take(1)
    assert result.as_numpy("OUT_FP32").tolist() == TOP2


def test_unix_socket_stream_classifies_each_response(served):
    with Client(socket=served.socket_path) as client:
        got = list(client.stream("streamed_scores", {"n": np.array([2], np.int32)},
                                 outputs=[{"name": "scores", "parameters": {"classification": 1}}]))
        assert [r["scores"].tolist() for r in got] == [[b"1.000000:0:cat"], [b"1.000000:1:dog"]]
        assert list(client.stream("streamed_scores", {"n": np.array([0], np.int32)},
                                  outputs=[{"name": "scores", "parameters": {"classification": 1}}])) == []


# -- classification and shared memory in one request ---------------------------------------------

@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_one_output_classified_another_into_a_region(served, regions, module):
    """Each output gets what it asked for. One output asked both ways is refused, as Triton's
    server does ("output can't set both ..."; tritonclient refuses it before sending:
    tests/hostile/test_combinations.py sends it anyway)."""
    client = (httpclient.InferenceServerClient(served.url.removeprefix("http://")) if module is httpclient
              else grpcclient.InferenceServerClient(grpc_address(served)))
    try:
        as_int = SCORES.astype(np.int64)
        op, op_name, op_key = regions(as_int.nbytes)
        client.register_system_shared_memory(op_name, op_key, as_int.nbytes)
        tensor = module.InferInput("scores", list(SCORES.shape), "FP32")
        tensor.set_data_from_numpy(SCORES)
        into_region = module.InferRequestedOutput("OUT_INT64")
        into_region.set_shared_memory(op_name, as_int.nbytes)
        result = client.infer("classes", [tensor], outputs=[module.InferRequestedOutput("OUT_FP32", class_count=2), into_region])
        assert [[x if isinstance(x, bytes) else x.encode() for x in row] for row in result.as_numpy("OUT_FP32")] == TOP2
        np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.int64, [2, 4]), as_int)
        with pytest.raises(InferenceServerException, match="shared memory can't be set on classification output"):
            module.InferRequestedOutput("OUT_FP32", class_count=2).set_shared_memory(op_name, 64)
    finally:
        client.unregister_system_shared_memory()
        client.close()


def test_one_output_classified_another_into_a_region_on_a_stream(stream, regions):
    as_int = SCORES.astype(np.int64)
    op, op_name, op_key = regions(as_int.nbytes)
    stream.client.register_system_shared_memory(op_name, op_key, as_int.nbytes)
    tensor = grpcclient.InferInput("scores", list(SCORES.shape), "FP32")
    tensor.set_data_from_numpy(SCORES)
    into_region = grpcclient.InferRequestedOutput("OUT_INT64")
    into_region.set_shared_memory(op_name, as_int.nbytes)
    stream.client.async_stream_infer("classes", [tensor], outputs=[grpcclient.InferRequestedOutput("OUT_FP32", class_count=2),
                                                                   into_region])
    [result] = stream.take(1)
    assert result.as_numpy("OUT_FP32").tolist() == TOP2
    assert [o.name for o in result.get_response().outputs] == ["OUT_FP32", "OUT_INT64"]
    assert result.get_response().raw_output_contents[1] == b""
    np.testing.assert_array_equal(shm.get_contents_as_numpy(op, np.int64, [2, 4]), as_int)


# -- perf_analyzer: streaming with shared memory ----------------------------------------------

@pytest.fixture(scope="module")
def perf_analyzer() -> str:
    """As tests/e2e/test_perf_analyzer.py finds it: PERF_ANALYZER, else on PATH, else skipped."""
    path = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
    if not path:
        pytest.skip("perf_analyzer is not installed: bench/perf_analyzer_setup.sh DIR, then PERF_ANALYZER=DIR/bin/perf_analyzer")
    return path


@pytest.mark.parametrize("model, shapes", [("add_sub", ()), ("repeat_int32", ("--shape", "IN:3", "--shape", "DELAY:3"))])
def test_perf_analyzer_streaming_with_shared_memory(perf_analyzer, served, model, shapes):
    """Inputs from and outputs into its regions, on a stream: an ordinary model and a decoupled
    one (each of whose responses goes into the output regions)."""
    done = subprocess.run([perf_analyzer, "-m", model, "-u", grpc_address(served), "-i", "grpc", "--streaming",
                           "--shared-memory", "system", "--output-shared-memory-size", "256", "--input-data", "zero",
                           "--concurrency-range", "1", "--measurement-interval", "300", "--stability-percentage", "1000",
                           *shapes], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rates = re.findall(r"Concurrency: 1, throughput: ([\d.]+) infer/sec", done.stdout)
    assert len(rates) == 1 and float(rates[0]) > 0, done.stdout[-3000:]
