"""LightGBM (.txt) and XGBoost (.json) model files, whose extensions other files share, served
by a running daemon once their content says which framework wrote them (backends/formats.py),
and compared with the framework's own predict / predict_proba over the Unix socket, HTTP and
gRPC. A LightGBM file cut short fails with a reason (LightGBM itself would crash the worker)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import tree_models
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from test_tree_models import GRPC_CALL, X, _check, _state, _want

from inferd.client import Client

pytestmark = pytest.mark.skipif(importlib.util.find_spec("inferd.backends.formats") is None,
                                reason="needs backends/formats.py: .json and .txt are told apart by content")
pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")

MODELS = ["lgb_binary", "lgb_multi", "lgb_regressor", "xgb_json"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    fitted = {
        "lgb_binary": tree_models.save_lightgbm("binary", root / "lgb_binary.txt"),
        "lgb_multi": tree_models.save_lightgbm("multiclass", root / "lgb_multi" / "1" / "model.txt"),
        "lgb_regressor": tree_models.save_lightgbm("regressor", root / "lgb_regressor.txt"),
        "xgb_json": tree_models.save_xgboost("multiclass", root / "xgb_json.json"),
    }
    return root, fitted


@pytest.fixture(scope="module")
def served(models):
    with DaemonProcess(models[0]) as d:
        yield d


@pytest.mark.parametrize("name", MODELS)
def test_unix_socket_and_http_answer_as_the_framework(served, models, name):
    want = _want(models[1][name], X)
    with Client(socket=served.socket_path) as c:
        _check(c.infer(name, {"input": X}), want)
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer(name, [tensor])
    client.close()
    _check({o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}, want)


@pytest.mark.parametrize("name", ["lgb_multi", "xgb_json"])
def test_grpc_answers_as_the_framework(served, models, name):
    [event] = [e for e in served.events("listening") if e["frontend"] == "grpc"]
    done = subprocess.run([sys.executable, "-c", GRPC_CALL, event["address"], name, json.dumps(X.tolist())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _check(json.loads(done.stdout), _want(models[1][name], X))


def test_platforms(served):
    assert served.http_json("/v2/models/lgb_binary")["platform"] == "lightgbm"
    assert served.http_json("/v2/models/xgb_json")["platform"] == "xgboost"


@pytest.mark.parametrize("kept", [0.3, 0.9])
async def test_a_truncated_lightgbm_file_fails_and_the_rest_serves(served, models, kept):
    text = (models[0] / "lgb_binary.txt").read_bytes()
    name = f"lgb_cut_{int(kept * 100)}"
    staging = models[0] / f".{name}.partial"  # a hidden name: the scan skips it until the rename
    staging.write_bytes(text[: int(len(text) * kept)])
    staging.rename(models[0] / f"{name}.txt")
    entry = await _state(served, name, "FAILED")
    assert "cut short" in entry["reason"]
    with Client(socket=served.socket_path) as c:
        _check(c.infer("lgb_regressor", {"input": X}), _want(models[1]["lgb_regressor"], X))
        assert np.asarray(c.infer("lgb_binary", {"input": X})["label"]).shape == (len(X),)
