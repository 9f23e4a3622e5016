"""Triton ensembles served as pipelines by the real daemon: an ensemble's config.pbtxt,
converted by config/triton_ensemble.py and written as the equivalent config.toml, over two ONNX
step models made here (scaler: y = 2x; summer: y = the row's sum). Its outputs come from both
steps, under the ensemble's names; one model runs in two steps of another; ensembles whose steps
do not fit fail with the reason while the rest serve. The same ensemble runs from its config.pbtxt
as Triton's repository holds it."""

from __future__ import annotations

import json
from pathlib import Path

import make_models
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from onnx import TensorProto, helper, numpy_helper
from test_workers import metric

from inferd.client import Client, InferdClientError
from inferd.config.triton_config import read_pbtxt
from inferd.config.triton_ensemble import ensemble_to_pipeline

# Steps listed out of order (Triton orders them by data); SCALED comes from the first step to run.
ENSEMBLE = '''
name: "%(name)s"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "SCALED" data_type: %(scaled_type)s dims: [ 4 ] },
  { name: "TOTAL" data_type: TYPE_FP32 dims: [ 1 ] }
]
ensemble_scheduling {
  step [
    { model_name: "%(summer)s" model_version: -1
      input_map { key: "x" value: "SCALED" } output_map { key: "y" value: "TOTAL" } },
    { model_name: "scaler" model_version: -1
      input_map { key: "x" value: "%(raw)s" } output_map { key: "y" value: "SCALED" } }
  ]
}
'''
GOOD = {"name": "ens", "scaled_type": "TYPE_FP32", "summer": "summer", "raw": "RAW"}

# scaler twice: 4x.
TWICE = '''
name: "twice" platform: "ensemble" max_batch_size: 8
input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "B" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "scaler" model_version: -1 input_map { key: "x" value: "A" } output_map { key: "y" value: "mid" } },
  { model_name: "scaler" model_version: -1 input_map { key: "x" value: "mid" } output_map { key: "y" value: "B" } }
] }
'''


# The same by hand, as docs/python-models.md shows it: output names only, nothing declared.
BY_HAND = '''
outputs = ["SCALED", "TOTAL"]
[[pipeline]]
model = "scaler"
inputs = { x = "RAW" }
outputs = { y = "SCALED" }
[[pipeline]]
model = "summer"
inputs = { x = "SCALED" }
outputs = { y = "TOTAL" }
'''


def build_step(path: Path, op: str) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    if op == "scale":
        nodes = [helper.make_node("Mul", ["x", "two"], ["y"])]
        inits = [numpy_helper.from_array(np.array(2, np.float32), "two")]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    else:
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)]
        inits = [numpy_helper.from_array(np.array([1], np.int64), "axes")]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    make_models._save(helper.make_graph(nodes, op, [x], [y], inits), path / "1" / "model.onnx")


def toml(data: dict) -> str:
    """config.toml text for pipeline data: plain keys first, lists of tables as [[key]], tables inline."""
    def value(v) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)  # strings, integers and lists of them are TOML as JSON writes them
    lines = [f"{key} = {value(v)}" for key, v in data.items() if not isinstance(v, list)]
    for key, items in data.items():
        for item in items if isinstance(items, list) else ():
            lines += [f"[[{key}]]", *(f"{json.dumps(k)} = {value(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


def write_converted(root: Path, text: str, name: str) -> None:
    pbtxt = root / f"{name}.pbtxt"
    pbtxt.write_text(text)
    (root / name).mkdir()
    (root / name / "config.toml").write_text(toml(ensemble_to_pipeline(read_pbtxt(pbtxt), name, str(pbtxt))))
    pbtxt.unlink()


def steps(root: Path) -> Path:
    build_step(root / "scaler", "scale")
    build_step(root / "summer", "sum")
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = steps(tmp_path_factory.mktemp("ensembles"))
    write_converted(root, ENSEMBLE % GOOD, "ens")
    write_converted(root, TWICE, "twice")
    write_converted(root, ENSEMBLE % (GOOD | {"name": "missing", "summer": "no_such_model"}), "missing")
    write_converted(root, ENSEMBLE % (GOOD | {"name": "miswired", "scaled_type": "TYPE_FP64"}), "miswired")
    for name, text in (("by_hand", BY_HAND), ("bad_outputs", BY_HAND.replace('["SCALED", "TOTAL"]', '["SCALED", 3]'))):
        (root / name).mkdir()
        (root / name / "config.toml").write_text(text)
    with DaemonProcess(root) as d:
        yield d


RAW = np.array([[1, 2, 3, 4], [0.5, 0, 0, -1]], np.float32)


def test_the_ensemble_gives_outputs_of_both_steps_under_its_names(served):
    with Client(socket=served.socket_path) as c:
        out = c.infer("ens", {"RAW": RAW})
        meta = c.model_metadata("ens")
    assert list(out) == ["SCALED", "TOTAL"]
    np.testing.assert_array_equal(out["SCALED"], RAW * 2)
    np.testing.assert_array_equal(out["TOTAL"], (RAW * 2).sum(axis=1, keepdims=True))
    assert meta["platform"] == "pipeline"
    assert meta["inputs"] == [{"name": "RAW", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "SCALED", "datatype": "FP32", "shape": [-1, 4]},
                               {"name": "TOTAL", "datatype": "FP32", "shape": [-1, 1]}]


def test_an_output_of_the_first_step_alone_does_not_run_the_second(served):
    before = metric(served, "inferd_requests_total", model="summer", protocol="pipeline", code="OK")
    scaled_before = metric(served, "inferd_requests_total", model="scaler", protocol="pipeline", code="OK")
    with Client(socket=served.socket_path) as c:
        out = c.infer("ens", {"RAW": RAW}, outputs=["SCALED"])
        total = c.infer("ens", {"RAW": RAW}, outputs=["TOTAL"])
    assert list(out) == ["SCALED"] and list(total) == ["TOTAL"]
    np.testing.assert_array_equal(total["TOTAL"], [[20], [-1]])
    assert metric(served, "inferd_requests_total", model="summer", protocol="pipeline", code="OK") == before + 1
    assert metric(served, "inferd_requests_total", model="scaler", protocol="pipeline", code="OK") == scaled_before + 2


def test_the_same_pipeline_written_by_hand(served):
    with Client(socket=served.socket_path) as c:
        out = c.infer("by_hand", {"RAW": RAW})
        meta = c.model_metadata("by_hand")
    np.testing.assert_array_equal(out["SCALED"], RAW * 2)
    np.testing.assert_array_equal(out["TOTAL"], [[20], [-1]])
    assert [t["name"] for t in meta["outputs"]] == ["SCALED", "TOTAL"]


def test_the_ensemble_over_http_and_grpc(served):
    [event] = [e for e in served.events("listening") if e["frontend"] == "grpc"]
    http = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput("RAW", list(RAW.shape), "FP32")
    tensor.set_data_from_numpy(RAW)
    result = http.infer("ens", [tensor], outputs=[httpclient.InferRequestedOutput("TOTAL")])
    np.testing.assert_array_equal(result.as_numpy("TOTAL"), [[20], [-1]])
    assert result.as_numpy("SCALED") is None
    http.close()
    grpc = grpcclient.InferenceServerClient(event["address"])
    tensor = grpcclient.InferInput("RAW", list(RAW.shape), "FP32")
    tensor.set_data_from_numpy(RAW)
    result = grpc.infer("ens", [tensor])
    np.testing.assert_array_equal(result.as_numpy("SCALED"), RAW * 2)
    np.testing.assert_array_equal(result.as_numpy("TOTAL"), [[20], [-1]])
    grpc.close()


def test_one_model_in_two_steps(served):
    with Client(socket=served.socket_path) as c:
        out = c.infer("twice", {"A": RAW})
    assert list(out) == ["B"]
    np.testing.assert_array_equal(out["B"], RAW * 4)


def test_bad_requests_to_the_ensemble_are_the_callers(served):
    with Client(socket=served.socket_path) as c:
        for inputs, reason in (({"RAW": RAW.astype(np.float64)}, "datatype FP64"),
                               ({"RAW": np.zeros((1, 5), np.float32)}, "shape [1, 5]"),
                               ({"RAW": np.zeros((9, 4), np.float32)}, "max_batch_size 8")):
            with pytest.raises(InferdClientError) as e:
                c.infer("ens", inputs)
            assert e.value.code == "invalid_argument" and reason in e.value.message, e.value.message
        with pytest.raises(InferdClientError) as e:
            c.infer("ens", {"RAW": RAW}, outputs=["x"])
        assert e.value.code == "invalid_argument" and "unknown output 'x'" in e.value.message
        np.testing.assert_array_equal(c.infer("ens", {"RAW": RAW})["SCALED"], RAW * 2)  # serves on


def test_ensembles_whose_steps_do_not_fit_fail_with_the_reason(served):
    with Client(socket=served.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
    assert index["missing"]["state"] == "FAILED" and "'no_such_model'" in index["missing"]["reason"]
    assert index["miswired"]["state"] == "FAILED"
    assert "pipeline output 'SCALED' is declared FP64, but its step's is FP32" in index["miswired"]["reason"]
    assert index["bad_outputs"]["state"] == "FAILED" and "outputs[1]" in index["bad_outputs"]["reason"]
    assert index["ens"]["state"] == "READY"


def test_the_ensemble_as_a_config_pbtxt(tmp_path):
    root = steps(tmp_path)
    for name, text in (("ens", ENSEMBLE % GOOD), ("twice", TWICE),
                       ("cycle", ENSEMBLE % (GOOD | {"name": "cycle", "raw": "TOTAL"}))):
        (root / name / "1").mkdir(parents=True)  # Triton's ensembles have an empty version directory
        (root / name / "config.pbtxt").write_text(text)
    with DaemonProcess(root) as d, Client(socket=d.socket_path) as c:
        out = c.infer("ens", {"RAW": RAW})
        np.testing.assert_array_equal(out["SCALED"], RAW * 2)
        np.testing.assert_array_equal(out["TOTAL"], [[20], [-1]])
        np.testing.assert_array_equal(c.infer("twice", {"A": RAW})["B"], RAW * 4)
        index = {r["name"]: r for r in c.models()}
        # Triton's clients read back the platform their config names
        assert d.http_json("/v2/models/ens")["platform"] == "ensemble"
        assert d.http_json("/v2/models/ens/config")["platform"] == "ensemble"
    assert index["cycle"]["state"] == "FAILED" and "a cycle through tensor" in index["cycle"]["reason"]
