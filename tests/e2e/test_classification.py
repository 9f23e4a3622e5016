"""Triton's classification extension through the clients that use it: tritonclient's
InferRequestedOutput(name, class_count=k) over HTTP (JSON and binary) and gRPC, and the Unix
client's {name, parameters} outputs. Each answer is the top k of the row as Triton's server
formats it ("score:index[:label]", scores as C++'s std::to_string), shaped [rows, k] when the
model batches and [k] when it does not."""

from __future__ import annotations

import make_models
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess

from inferd.client import Client

# Five classes, three labels: classes 3 and 4 have none (Triton leaves the label off).
LABELS = "cat\ndog\nbird\n"
SCORES = np.array([[0.1, 0.7, 0.05, 0.9, 0.7], [5.5, -1.0, 0.25, 0.0, 2.0]], np.float32)
# Highest first, ties lowest index first; "%f" scores.
TOP3 = [[b"0.900000:3", b"0.700000:1:dog", b"0.700000:4"],
        [b"5.500000:0:cat", b"2.000000:4", b"0.250000:2:bird"]]
CONFIG = """max_batch_size = 8
[[outputs]]
name = "OUT_FP32"
datatype = "FP32"
shape = [-1, -1]
label_filename = "labels.txt"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    make_models.build_scores(root / "classes" / "1" / "model.onnx")
    (root / "classes" / "config.toml").write_text(CONFIG)
    (root / "classes" / "labels.txt").write_text(LABELS)
    make_models.build_fixed(root / "fixed.onnx")
    with DaemonProcess(root) as d:
        yield d


def _grpc(d: DaemonProcess) -> grpcclient.InferenceServerClient:
    [event] = [e for e in d.events("listening") if e["frontend"] == "grpc"]
    return grpcclient.InferenceServerClient(event["address"])


def _inputs(module, scores: np.ndarray) -> list:
    tensor = module.InferInput("scores", list(scores.shape), "FP32")
    tensor.set_data_from_numpy(scores)
    return [tensor]


@pytest.mark.parametrize("binary", [True, False])
def test_http_class_count_gives_top_k_with_labels(served, binary):
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    try:
        outputs = [httpclient.InferRequestedOutput("OUT_FP32", binary_data=binary, class_count=3)]
        result = client.infer("classes", _inputs(httpclient, SCORES), outputs=outputs)
        out = result.as_numpy("OUT_FP32")
        assert result.get_output("OUT_FP32")["datatype"] == "BYTES"
        assert out.shape == (2, 3)
        # (JSON carries the strings as text: tritonclient gives str there, bytes from binary data.)
        assert [[x if isinstance(x, bytes) else x.encode() for x in row] for row in out] == TOP3
    finally:
        client.close()


def test_grpc_class_count_gives_top_k_with_labels(served):
    client = _grpc(served)
    try:
        outputs = [grpcclient.InferRequestedOutput("OUT_FP32", class_count=3)]
        result = client.infer("classes", _inputs(grpcclient, SCORES), outputs=outputs)
        assert result.get_output("OUT_FP32").datatype == "BYTES"
        assert result.as_numpy("OUT_FP32").tolist() == TOP3
    finally:
        client.close()


def test_unix_client_output_with_classification_parameter(served):
    scores = np.array([[3, 9, -2]], np.float32)
    with Client(socket=served.socket_path) as c:
        out = c.infer("classes", {"scores": scores},
                      outputs=[{"name": "OUT_INT64", "parameters": {"classification": 2}}, "OUT_FP32"])
    assert out["OUT_INT64"].tolist() == [[b"9:1", b"3:0"]]  # integers as they are; no label file
    np.testing.assert_array_equal(out["OUT_FP32"], scores)


def test_k_past_the_class_count_is_clamped_and_other_outputs_stay_raw(served):
    client = _grpc(served)
    try:
        scores = np.array([[1, 2]], np.float32)
        outputs = [grpcclient.InferRequestedOutput("OUT_INT64", class_count=1000),
                   grpcclient.InferRequestedOutput("OUT_FP32")]
        result = client.infer("classes", _inputs(grpcclient, scores), outputs=outputs)
        assert result.as_numpy("OUT_INT64").tolist() == [[b"2:1", b"1:0"]]
        np.testing.assert_array_equal(result.as_numpy("OUT_FP32"), scores)
    finally:
        client.close()


def test_a_model_without_batching_gives_shape_k(served):
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    try:
        x = np.array([[1, 5, 2], [0, 4, 3]], np.float32)  # fixed: y = 2x, classes over all 6 values
        tensor = httpclient.InferInput("x", [2, 3], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("fixed", [tensor], outputs=[httpclient.InferRequestedOutput("y", class_count=2)])
        assert result.as_numpy("y").tolist() == [b"10.000000:1", b"8.000000:4"]
    finally:
        client.close()
