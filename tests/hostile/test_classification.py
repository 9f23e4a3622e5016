"""Classification against bad callers and careless model authors: a k that is not a positive
integer, an output that is not numeric, a request for too many results, and label files that
are missing, too big, not text, not files, or lead out of the model's directory. Each caller
gets a clear INVALID_ARGUMENT (HTTP 400) and each bad model a FAILED state that says why
(with no server path); the daemon serves on."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import make_models
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import DaemonProcess
from tritonclient.utils import InferenceServerException

from inferd.client import Client, InferdClientError
from inferd.daemon.classification import MAX_RESULTS
from inferd.daemon.models.labels import MAX_LABEL_BYTES

OUTPUT = '[[outputs]]\nname = "OUT_FP32"\ndatatype = "FP32"\nshape = [-1, -1]\nlabel_filename = "{}"\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_classes")

    def model(name: str, label_filename: str) -> os.PathLike:
        make_models.build_scores(root / name / "1" / "model.onnx")
        (root / name / "config.toml").write_text("max_batch_size = 8\n" + OUTPUT.format(label_filename))
        return root / name

    (model("good", "labels.txt") / "labels.txt").write_text("a\nb\n")
    model("missing", "labels.txt")
    (model("huge", "labels.txt") / "labels.txt").write_bytes(b"x\n" * (MAX_LABEL_BYTES // 2 + 1))
    (model("binary", "labels.txt") / "labels.txt").write_bytes(b"ok\n\xff\xfe\n")
    os.mkfifo(model("fifo", "labels.txt") / "labels.txt")  # would hang a plain open()
    secret = root.parent / "secret.txt"
    secret.write_text("outside\n")
    (model("escape", "labels.txt") / "labels.txt").symlink_to(secret)
    model("dotdot", "../secret.txt")
    model("absolute", str(secret))
    with DaemonProcess(root) as d:
        yield d


def _post(d: DaemonProcess, path: str, doc: dict) -> tuple[int, dict]:
    request = urllib.request.Request(d.url + path, data=json.dumps(doc).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _infer(d: DaemonProcess, output: str, parameters: dict, rows: int = 1, classes: int = 3) -> tuple[int, dict]:
    doc = {"inputs": [{"name": "scores", "datatype": "FP32", "shape": [rows, classes], "data": [0.5] * (rows * classes)}],
           "outputs": [{"name": output, "parameters": parameters}]}
    return _post(d, "/v2/models/good/infer", doc)


@pytest.mark.parametrize("k", [0, -1, "3", 1.5, True, None, [3], 2**70])
def test_a_k_that_is_not_a_positive_integer_is_refused(served, k):
    status, body = _infer(served, "OUT_FP32", {"classification": k})
    assert status == 400, body
    assert "classification must be a positive integer" in body["error"]


@pytest.mark.parametrize("output", ["OUT_BOOL", "OUT_BYTES"])
def test_a_non_numeric_output_is_refused(served, output):
    status, body = _infer(served, output, {"classification": 1})
    assert status == 400 and "needs a numeric output" in body["error"], body


def test_too_many_results_are_refused_not_formatted(served):
    classes = MAX_RESULTS // 4 + 1  # a dynamic class count: refused on the result
    status, body = _infer(served, "OUT_FP32", {"classification": classes}, rows=4, classes=classes)
    assert status == 400 and f"at most {MAX_RESULTS}" in body["error"], body
    status, body = _infer(served, "OUT_FP32", {"classification": classes}, rows=1, classes=classes)
    assert status == 200 and body["outputs"][0]["shape"] == [1, classes]


def test_grpc_and_unix_refuse_a_bad_k_as_invalid_argument(served):
    [event] = [e for e in served.events("listening") if e["frontend"] == "grpc"]
    client = grpcclient.InferenceServerClient(event["address"])
    try:
        tensor = grpcclient.InferInput("scores", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("good", [tensor], outputs=[grpcclient.InferRequestedOutput("OUT_FP32", class_count=-2)])
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()
    with Client(socket=served.socket_path) as c:
        with pytest.raises(InferdClientError) as caught:
            c.infer("good", {"scores": np.ones((1, 3), np.float32)},
                    outputs=[{"name": "OUT_BYTES", "parameters": {"classification": 1}}])
        assert caught.value.code == "invalid_argument"
        # ...and serves on, labels and all.
        out = c.infer("good", {"scores": np.array([[0, 2, 1]], np.float32)},
                      outputs=[{"name": "OUT_FP32", "parameters": {"classification": 2}}])
        assert out["OUT_FP32"].tolist() == [[b"2.000000:1:b", b"1.000000:2"]]


@pytest.mark.parametrize("model, reason", [
    ("missing", "label file 'labels.txt' of output 'OUT_FP32' does not exist"),
    ("huge", f"is over {MAX_LABEL_BYTES} bytes"),
    ("binary", "is not UTF-8"),
    ("fifo", "is not a regular file"),
    ("escape", "leads out of the model's directory"),
    ("dotdot", "relative to the model's directory"),
    ("absolute", "relative to the model's directory"),
])
def test_a_bad_label_file_fails_the_load_with_its_reason(served, model, reason):
    status, rows = _post(served, "/v2/repository/index", {})
    assert status == 200
    [row] = [r for r in rows if r["name"] == model]
    assert row["state"] == "FAILED" and reason in row["reason"], row
    assert str(served.models) not in row["reason"] and "secret" not in row["reason"].replace("../secret.txt", "")
