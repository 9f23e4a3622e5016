"""XGBoost (.ubj) and CatBoost (.cbm) model files dropped into a running daemon's directory:
served by real workers, called over HTTP (tritonclient), gRPC (tritonclient in a subprocess)
and the Unix socket, and compared with the framework's own predict / predict_proba. Broken
files fail with the framework's reason while the rest serves."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tree_models
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from test_workers import metric
from waiting import eventually

from inferd.client import AsyncClient, Client, InferdClientError

pytest.importorskip("xgboost")
pytest.importorskip("catboost")

X = tree_models.data(12)[0]

# tritonclient's gRPC client runs in its own interpreter (the tests' process keeps gRPC out).
GRPC_CALL = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
address, model, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
x = np.array(rows, dtype=np.float32)
tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
tensor.set_data_from_numpy(x)
result = grpcclient.InferenceServerClient(address).infer(model, [tensor])
outputs = {o.name: result.as_numpy(o.name).tolist() for o in result.get_response().outputs}
print(json.dumps(outputs, default=bytes.decode))
"""


# A DataFrame-fitted model's columns as inputs: config.toml names the categorical one as BYTES.
CAT_COLUMNS = """\
[[inputs]]
name = "colour"
datatype = "BYTES"
shape = [-1]
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("trees")
    fitted = {
        "xgb_binary": tree_models.save_xgboost("binary", root / "xgb_binary.ubj"),
        "xgb_multi": tree_models.save_xgboost("multiclass", root / "xgb_multi" / "1" / "model.ubj"),
        "cat_animals": tree_models.save_catboost("strings", root / "cat_animals.cbm"),
        "cat_regressor": tree_models.save_catboost("regressor", root / "cat_regressor" / "1" / "model.cbm"),
    }
    (root / "xgb_multi" / "config.toml").write_text("max_queue_delay_ms = 200\n")
    fitted["cat_colours"], fitted["cat_colours rows"] = tree_models.save_catboost_categorical(
        root / "cat_colours" / "1" / "model.cbm")
    (root / "cat_colours" / "config.toml").write_text(CAT_COLUMNS)
    return root, fitted


@pytest.fixture(scope="module")
def served(models):
    with DaemonProcess(models[0]) as d:
        yield d


def _want(model, x: np.ndarray) -> dict:
    if not hasattr(model, "predict_proba"):
        return {"prediction": model.predict(x).astype(np.float32)}
    label = model.predict(x).reshape(-1)
    return {"label": [s.encode() for s in label] if label.dtype.kind in "OU" else label,
            "probabilities": model.predict_proba(x)}


def _check(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        if name == "label":
            assert np.asarray(got[name]).tolist() == np.asarray(expected).tolist()
        else:
            np.testing.assert_allclose(np.asarray(got[name], np.float32), expected, rtol=1e-6, atol=1e-6)


MODELS = ["xgb_binary", "xgb_multi", "cat_animals", "cat_regressor"]


@pytest.mark.parametrize("name", MODELS)
def test_unix_socket_answers_as_the_framework(served, models, name):
    with Client(socket=served.socket_path) as c:
        _check(c.infer(name, {"input": X}), _want(models[1][name], X))


@pytest.mark.parametrize("name", MODELS)
def test_http_answers_as_the_framework(served, models, name):
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer(name, [tensor])
    got = {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    client.close()
    _check(got, _want(models[1][name], X))


@pytest.mark.parametrize("name", MODELS)
def test_grpc_answers_as_the_framework(served, models, name):
    [event] = [e for e in served.events("listening") if e["frontend"] == "grpc"]
    done = subprocess.run([sys.executable, "-c", GRPC_CALL, event["address"], name, json.dumps(X.tolist())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    if "label" in got and isinstance(got["label"][0], str):
        got["label"] = [s.encode() for s in got["label"]]
    _check(got, _want(models[1][name], X))


def test_metadata_names_the_framework_and_the_tensors(served):
    meta = served.http_json("/v2/models/cat_animals")
    assert meta["platform"] == "catboost"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("input", "FP32", [-1, 5])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("label", "BYTES", [-1]), ("probabilities", "FP32", [-1, 3])]
    assert served.http_json("/v2/models/xgb_binary")["platform"] == "xgboost"


def test_the_label_alone_over_http_json(served, models):
    status, body = served.post_json("/v2/models/cat_animals/infer", {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(X[:2].shape), "data": X[:2].ravel().tolist()}],
        "outputs": [{"name": "label"}]})
    assert status == 200
    assert [o["name"] for o in body["outputs"]] == ["label"]
    assert body["outputs"][0]["data"] == models[1]["cat_animals"].predict(X[:2]).reshape(-1).tolist()


async def test_concurrent_one_row_requests_batch_and_each_gets_its_row(served, models):
    before = metric(served, "inferd_batch_size_count", model="xgb_multi")
    rows = [X[i:i + 1] for i in range(len(X))]
    async with AsyncClient(socket=served.socket_path) as c:
        answers = await asyncio.gather(*(c.infer("xgb_multi", {"input": r}) for r in rows))
    want = _want(models[1]["xgb_multi"], X)
    for i, got in enumerate(answers):
        assert got["label"].tolist() == [want["label"][i]]
        np.testing.assert_allclose(got["probabilities"], want["probabilities"][i:i + 1], rtol=1e-6)
    batches = metric(served, "inferd_batch_size_count", model="xgb_multi") - before
    assert 1 <= batches < len(rows)


def test_columns_declared_in_config_toml_take_text_over_http_json(served, models):
    model, frame = models[1]["cat_colours"], models[1]["cat_colours rows"]
    meta = served.http_json("/v2/models/cat_colours")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("size", "FP32", [-1]),
                                                                               ("colour", "BYTES", [-1])]
    status, body = served.post_json("/v2/models/cat_colours/infer", {"inputs": [
        {"name": "size", "datatype": "FP32", "shape": [len(frame)], "data": frame["size"].tolist()},
        {"name": "colour", "datatype": "BYTES", "shape": [len(frame)], "data": frame["colour"].tolist()}]})
    assert status == 200, body
    got = {o["name"]: o["data"] for o in body["outputs"]}
    assert got["label"] == model.predict(frame).tolist()
    np.testing.assert_allclose(np.reshape(got["probabilities"], (-1, 2)), model.predict_proba(frame), rtol=1e-6, atol=1e-7)


def test_wrong_feature_count_is_the_callers_error_and_the_model_serves_on(served, models):
    with Client(socket=served.socket_path) as c:
        with pytest.raises(InferdClientError) as e:
            c.infer("xgb_binary", {"input": np.zeros((2, 4), np.float32)})
        assert e.value.code == "invalid_argument"
        _check(c.infer("xgb_binary", {"input": X}), _want(models[1]["xgb_binary"], X))
    status, body = served.post_json("/v2/models/xgb_binary/infer", {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 7], "data": [0.0] * 7}]})
    assert status == 400 and "input" in body["error"]


async def _state(d: DaemonProcess, name: str, state: str) -> dict:
    """The model's index entry once the daemon has loaded or failed it."""
    def entry():
        with Client(socket=d.socket_path) as c:
            found = {r["name"]: r for r in c.models()}.get(name)
        return found if found and found["state"] == state else None
    return await eventually(entry, 120, f"{name} {state}")


@pytest.mark.parametrize("filename, content, reason", [
    ("broken_xgb.ubj", b"{\x00\x01not ubjson at all", "not an XGBoost model"),
    ("broken_cat.cbm", b"CBM1" + bytes(range(256)) * 4, "not a CatBoost model"),
])
async def test_a_corrupt_file_dropped_in_fails_with_a_reason_and_the_rest_serves(served, models, filename, content, reason):
    (models[0] / filename).write_bytes(content)
    name = filename.split(".")[0]
    entry = await _state(served, name, "FAILED")
    assert reason in entry["reason"]
    assert str(models[0]) not in entry["reason"]  # no server paths to callers
    with Client(socket=served.socket_path) as c:
        _check(c.infer("cat_regressor", {"input": X}), _want(models[1]["cat_regressor"], X))


async def test_a_truncated_ubj_file_fails_and_the_rest_serves(served, models):
    """XGBoost itself would crash the worker on it; the backend refuses it first."""
    data = (models[0] / "xgb_binary.ubj").read_bytes()
    (models[0] / ".cut.part").write_bytes(data[: len(data) // 2])
    (models[0] / ".cut.part").rename(models[0] / "xgb_cut.ubj")
    entry = await _state(served, "xgb_cut", "FAILED")
    assert "cut short" in entry["reason"]
    with Client(socket=served.socket_path) as c:
        _check(c.infer("xgb_binary", {"input": X}), _want(models[1]["xgb_binary"], X))


async def test_a_model_file_dropped_in_while_running_serves(served, models):
    fitted = tree_models.save_xgboost("regressor", models[0] / "late" / "staging.ubj")
    (models[0] / "late" / "staging.ubj").rename(models[0] / "xgb_late.ubj")
    await _state(served, "xgb_late", "READY")
    with Client(socket=served.socket_path) as c:
        _check(c.infer("xgb_late", {"input": X}), _want(fitted, X))


@pytest.mark.parametrize("module, backend, cls", [
    ("xgboost", "xgboost", "XGBoostBackend"), ("lightgbm", "lightgbm", "LightGBMBackend"),
    ("catboost", "catboost", "CatBoostBackend")])
def test_a_missing_framework_names_what_to_install(models, module, backend, cls):
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # import {module} raises ImportError
        from pathlib import Path
        from inferd.backends.{backend} import {cls}
        try:
            {cls}(Path("model"), None).load()
        except RuntimeError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert f"pip install 'inferd[{module}]'" in out
