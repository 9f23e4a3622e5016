"""Which backend a file gets, end to end (backends/formats.py): files that none of the formats
recognise are FAILED with what they are while the rest serves; config.toml's `backend`; the
trust rules for pickles; and directory models (a SavedModel, an MLflow model) that load only
once complete and reload when a file in them changes, run by a stand-in backend
(tests/directory_models.py) so that they need neither framework."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import make_models
import numpy as np
import pytest
from daemon_process import DaemonProcess
from waiting import eventually

from inferd.client import Client, InferdClientError

STAND_IN = Path(__file__).resolve().parents[1] / "directory_models.py"
FAST = {"INFERD_MODELS_SETTLE_MS": "100", "INFERD_DEFAULTS_MIN_WORKERS": "1"}
A = np.arange(16, dtype=np.int32).reshape(1, 16)
X = np.array([[1.0, 2.0]], np.float32)

NOT_LIGHTGBM = "is a .txt file that is not a LightGBM model (it does not begin with a 'tree' line and a 'version=v<N>' line)"


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _index(client: Client) -> dict[str, dict]:
    return {r["name"]: r for r in client.models()}


def _http_status(d: DaemonProcess, path: str, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(d.url + path, data=data), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    make_models.build_add_sub(root / "addsub.onnx")
    _write(root / "notes.txt", "Remember to retrain in May.\n")
    _write(root / "rows.json", '{"rows": [[1, 2], [3, 4]]}')
    _write(root / "cat" / "1" / "model.json", '{"model_info": {}, "oblivious_trees": []}')
    _write(root / "declared" / "config.toml", 'backend = "lightgbm"\n')
    _write(root / "declared" / "1" / "model.json", "{}")
    _write(root / "unknown" / "config.toml", 'backend = "tensorflow_lite"\n')
    make_models.build_add_sub(root / "unknown" / "1" / "model.onnx")
    _write(root / "pickled.pkl", b"\x80\x05N.").chmod(0o664)
    return root


@pytest.fixture(scope="module")
def served(repo):
    with DaemonProcess(repo, env=FAST) as d:
        yield d


def test_files_no_format_recognises_fail_with_what_they_are_and_the_rest_serves(served):
    with Client(socket=served.socket_path) as c:
        index = _index(c)
        assert {index[n]["state"] for n in ("notes", "rows", "cat", "declared", "unknown", "pickled")} == {"FAILED"}
        assert index["notes"]["reason"].endswith("notes.txt " + NOT_LIGHTGBM)
        assert index["rows"]["reason"].endswith("rows.json is a .json file that is not an XGBoost model (no 'learner' key)")
        assert "model.json is a CatBoost model saved as JSON: save it as .cbm (format='cbm') instead" in index["cat"]["reason"]
        with pytest.raises(InferdClientError) as e:
            c.infer("rows", {"x": X})
        assert e.value.code == "unavailable"
        out = c.infer("addsub", {"INPUT0": A, "INPUT1": A})
        np.testing.assert_array_equal(out["OUTPUT0"], A + A)
    assert _http_status(served, "/v2/models/notes/ready") != 200
    assert _http_status(served, "/v2/models/notes/infer",
                        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}) == 503
    assert _http_status(served, "/v2/models/addsub/ready") == 200


def test_config_tomls_backend_must_name_a_backend_that_reads_the_file(served):
    with Client(socket=served.socket_path) as c:
        index = _index(c)
    assert "config.toml says backend = 'lightgbm', but a .json file is read by xgboost" in index["declared"]["reason"]
    reason = index["unknown"]["reason"]
    assert "backend: unknown backend 'tensorflow_lite'; one of " in reason
    assert all(name in reason for name in ("catboost", "lightgbm", "mlflow", "onnx", "sklearn", "tensorflow", "xgboost"))


def test_a_pickle_others_can_change_is_refused_before_it_is_opened(served):
    with Client(socket=served.socket_path) as c:
        reason = _index(c)["pickled"]["reason"]
    assert "pickled.pkl is writable by its group; refusing to run code that others could change" in reason


async def test_a_text_file_replaced_by_a_lightgbm_model_is_judged_again(served, repo):
    """The content decides at each load: once notes.txt is LightGBM's model, it is no longer
    refused as something else (it serves where the LightGBM backend is installed)."""
    lgb = pytest.importorskip("lightgbm")
    features = np.random.default_rng(2).random((40, 3))
    booster = lgb.LGBMRegressor(n_estimators=2, verbose=-1).fit(features, features[:, 0]).booster_
    part = repo / "notes.txt.part"
    booster.save_model(str(part))
    os.replace(part, repo / "notes.txt")
    with Client(socket=served.socket_path) as c:
        row = await eventually(lambda: [r for r in c.models() if r["name"] == "notes" and NOT_LIGHTGBM not in r.get("reason", "")],
                               what="notes.txt to be judged again")
    assert row[0]["state"] in ("READY", "FAILED", "LOADING")


# -- directory models ------------------------------------------------------------------------------

def _loads(d: DaemonProcess, model: str) -> list[dict]:
    return [e for e in d.events("model loaded") if e["model"] == model]


def _y(client: Client, model: str) -> float | None:
    """What the stand-in adds to x (the sum of the numbers in the model's files)."""
    try:
        return float(client.infer(model, {"x": X})["y"][0, 0] - X[0, 0])
    except InferdClientError:
        return None


async def test_a_savedmodel_copied_slowly_loads_only_once_complete_and_reloads_when_replaced(tmp_path):
    models = tmp_path / "models"
    variables = models / "tf" / "1" / "model.savedmodel" / "variables"
    variables.mkdir(parents=True)
    with DaemonProcess(models, env=FAST, program=[sys.executable, str(STAND_IN)]) as d, Client(socket=d.socket_path) as c:
        # A model placed after the directories: once it serves, the daemon watches inside them.
        make_models.build_add_sub(models / "barrier.onnx")
        await eventually(lambda: _index(c).get("barrier", {}).get("state") == "READY", what="barrier to load")
        _write(variables.parent / "saved_model.pb", "1")
        with open(variables / "variables.data-00000-of-00001", "w") as f:
            for digit in "2000":  # the file holds 2, 20, 200, then 2000
                f.write(digit)
                f.flush()
                await asyncio.sleep(0.3)  # three settle times
                assert _loads(d, "tf") == []
                assert _y(c, "tf") is None
        await eventually(lambda: _y(c, "tf") == 2001, what="tf to load, whole")
        assert len(_loads(d, "tf")) == 1
        # A file replaced inside the SavedModel: a new generation, with it.
        _write(variables / "variables.index.part", "40")
        os.replace(variables / "variables.index.part", variables / "variables.index")
        await eventually(lambda: _y(c, "tf") == 2041, what="tf to reload")
        assert len(_loads(d, "tf")) == 2
        assert c.infer("barrier", {"INPUT0": A, "INPUT1": A})["OUTPUT0"].tolist() == (A + A).tolist()


async def test_an_mlflow_directory_is_version_1_and_others_can_change_it_refuses(tmp_path):
    models = tmp_path / "models"
    _write(models / "flow" / "MLmodel", "flavors: {}\n")
    _write(models / "flow" / "data" / "model.pkl", "7")
    _write(models / "byversion" / "3" / "MLmodel", "flavors: {}\n")
    _write(models / "byversion" / "3" / "weights", "5")
    _write(models / "open" / "MLmodel", "flavors: {}\n")
    _write(models / "open" / "python_model.pkl", "9").chmod(0o666)
    with DaemonProcess(models, env=FAST, program=[sys.executable, str(STAND_IN)]) as d, Client(socket=d.socket_path) as c:
        index = _index(c)
        assert (index["flow"]["state"], index["flow"]["version"]) == ("READY", "1")
        assert _y(c, "flow") == 7
        assert (index["byversion"]["state"], index["byversion"]["version"]) == ("READY", "3")
        assert _y(c, "byversion") == 5
        assert index["open"]["state"] == "FAILED"
        assert "open/python_model.pkl is writable by other users; refusing to run code" in index["open"]["reason"]
        assert _loads(d, "open") == []
