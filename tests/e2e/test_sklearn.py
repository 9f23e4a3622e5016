"""scikit-learn models end to end: estimators and Pipelines the tests fit and save (joblib,
pickle, skops), dropped into a running daemon's models directory, served by real workers and
called through tritonclient HTTP, tritonclient gRPC (in a subprocess) and the Unix socket; every
answer is compared with the estimator's own predict / predict_proba in-process."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC
from waiting import eventually

from inferd.client import AsyncClient, Client, InferdClientError

X, Y = load_iris(return_X_y=True)
NAMES = np.array(["setosa", "versicolor", "virginica"])
ROWS = X[::7].astype(np.float32)  # 22 rows of every class
FRAME = pd.DataFrame({"age": [23.0, 41, 35, 62, 19, 50, 33, 71],
                      "city": ["Oslo", "Lima", "Oslo", "Pune", "Lima", "Pune", "Oslo", "Lima"]})
FRAME_Y = [0, 1, 0, 1, 0, 1, 1, 1]


def _fit():
    frame = make_pipeline(ColumnTransformer([("city", OneHotEncoder(), ["city"])], remainder="passthrough"),
                          LogisticRegression()).fit(FRAME, FRAME_Y)
    return {
        "iris_int": LogisticRegression(max_iter=500).fit(X, Y),
        "iris_str": LogisticRegression(max_iter=500, C=0.5).fit(X, NAMES[Y]),
        "scaled": make_pipeline(StandardScaler(), SVC()).fit(X, Y),  # no predict_proba: label only
        "forest": RandomForestRegressor(n_estimators=8, random_state=0).fit(X[:, :3], X[:, 3]),
        "frame": frame,
    }


@pytest.fixture(scope="module")
def models():
    return _fit()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def served(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("sklearn")
    (root / "iris_int" / "1").mkdir(parents=True)
    joblib.dump(models["iris_int"], root / "iris_int" / "1" / "model.joblib")
    _write(root / "iris_int" / "config.toml", "max_batch_size = 32\nmax_queue_delay_ms = 50\n")
    with open(root / "iris_str.pkl", "wb") as f:
        pickle.dump(models["iris_str"], f)
    joblib.dump(models["scaled"], root / "scaled.joblib")
    joblib.dump(models["frame"], root / "frame.joblib")
    (root / "forest" / "1").mkdir(parents=True)
    sio.dump(models["forest"], root / "forest" / "1" / "model.skops")
    _write(root / "forest" / "config.toml", '[parameters]\nskops_trusted = ["sklearn.tree._tree.Tree"]\n'
           '[[inputs]]\nname = "input"\ndatatype = "FP64"\nshape = [-1, 3]\n')
    sio.dump(models["forest"], root / "untrusted.skops")  # no config.toml trusts its Tree
    with open(root / "dict.pkl", "wb") as f:
        pickle.dump({"weights": [1, 2, 3]}, f)  # a pickle, but not an estimator
    (root / "corrupt.joblib").write_bytes(b"\x80\x04 this is not a pickle")
    (root / "open" / "1").mkdir(parents=True)
    joblib.dump(models["iris_int"], root / "open" / "1" / "model.joblib")
    os.chmod(root / "open", 0o777)  # anyone could swap the pickle: it must not run
    with DaemonProcess(root) as d:
        yield d


def test_metadata_follows_the_tabular_convention(served):
    def tensors(name, kind):
        return [(t["name"], t["datatype"], t["shape"]) for t in served.http_json(f"/v2/models/{name}")[kind]]

    assert served.http_json("/v2/models/iris_int")["platform"] == "sklearn"
    assert tensors("iris_int", "inputs") == [("input", "FP32", [-1, 4])]
    assert tensors("iris_int", "outputs") == [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 3])]
    assert tensors("iris_str", "outputs")[0] == ("label", "BYTES", [-1])
    assert tensors("scaled", "outputs") == [("label", "INT64", [-1])]
    assert tensors("forest", "inputs") == [("input", "FP64", [-1, 3])]  # config.toml's FP64
    assert tensors("forest", "outputs") == [("prediction", "FP32", [-1])]
    assert tensors("frame", "inputs") == [("age", "FP64", [-1]), ("city", "BYTES", [-1])]


@pytest.mark.parametrize("name", ["iris_int", "iris_str"])
def test_classifiers_over_http_match_predict_and_predict_proba(served, models, name):
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    result = client.infer(name, [tensor], outputs=[httpclient.InferRequestedOutput(n) for n in ("label", "probabilities")])
    client.close()
    want = models[name].predict(ROWS)
    got = result.as_numpy("label")
    assert got.tolist() == (want.tolist() if name == "iris_int" else [s.encode() for s in want])
    np.testing.assert_allclose(result.as_numpy("probabilities"), models[name].predict_proba(ROWS), rtol=1e-5, atol=1e-7)


def test_every_model_over_the_unix_socket(served, models):
    with Client(socket=served.socket_path) as c:
        assert c.infer("scaled", {"input": ROWS})["label"].tolist() == models["scaled"].predict(ROWS).tolist()
        forest_rows = X[::5, :3]
        np.testing.assert_allclose(c.infer("forest", {"input": forest_rows})["prediction"],
                                   models["forest"].predict(forest_rows), rtol=1e-6)
        out = c.infer("frame", {"age": FRAME["age"].to_numpy(), "city": FRAME["city"].to_numpy().astype(object)})
        assert out["label"].tolist() == models["frame"].predict(FRAME).tolist()
        np.testing.assert_allclose(out["probabilities"], models["frame"].predict_proba(FRAME), rtol=1e-5, atol=1e-7)
        only = c.infer("iris_str", {"input": ROWS[:2]}, outputs=["probabilities"])
        assert set(only) == {"probabilities"}  # what was asked, no label


GRPC_CALLS = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(sys.argv[1])
    rows = np.array(json.loads(sys.argv[2]), np.float32)
    x = grpcclient.InferInput("input", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    iris = client.infer("iris_str", [x])
    age = grpcclient.InferInput("age", [2], "FP64")
    age.set_data_from_numpy(np.array([30.0, 60.0]))
    city = grpcclient.InferInput("city", [2], "BYTES")
    city.set_data_from_numpy(np.array([b"Pune", b"Oslo"], object))
    frame = client.infer("frame", [age, city])
    print(json.dumps({"label": [b.decode() for b in iris.as_numpy("label")],
                      "probabilities": iris.as_numpy("probabilities").tolist(),
                      "frame": frame.as_numpy("label").tolist()}))
''')


def test_grpc_answers_match(served, models):
    [address] = [e["address"] for e in served.events("listening") if e["frontend"] == "grpc"]
    done = subprocess.run([sys.executable, "-c", GRPC_CALLS, address, json.dumps(ROWS.tolist())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["label"] == models["iris_str"].predict(ROWS).tolist()
    np.testing.assert_allclose(got["probabilities"], models["iris_str"].predict_proba(ROWS), rtol=1e-5, atol=1e-7)
    assert got["frame"] == models["frame"].predict(pd.DataFrame({"age": [30.0, 60.0], "city": ["Pune", "Oslo"]})).tolist()


async def test_concurrent_rows_batch_and_each_gets_its_own(served, models):
    def counts():
        stats = served.http_json("/v2/models/iris_int/stats")["model_stats"][0]
        return stats["inference_count"], stats["execution_count"]

    before = counts()
    async with AsyncClient(socket=served.socket_path) as c:
        answers = await asyncio.gather(*(c.infer("iris_int", {"input": ROWS[i:i + 1]}) for i in range(16)))
    assert [int(a["label"][0]) for a in answers] == models["iris_int"].predict(ROWS[:16]).tolist()
    for i, a in enumerate(answers):
        np.testing.assert_allclose(a["probabilities"][0], models["iris_int"].predict_proba(ROWS[i:i + 1])[0], rtol=1e-5, atol=1e-7)
    after = counts()
    assert after[0] - before[0] == 16
    assert 1 <= after[1] - before[1] < 16  # fewer executions than requests: they were batched


async def test_a_replaced_file_answers_as_the_new_estimator(served):
    root = served.models
    first = LogisticRegression(max_iter=500).fit(X, Y)
    second = LogisticRegression(max_iter=500).fit(X, 2 - Y)  # classes swapped: other labels for the same rows
    joblib.dump(first, root / ".swap.tmp")
    os.replace(root / ".swap.tmp", root / "swap.joblib")

    def labels():
        try:
            with Client(socket=served.socket_path) as c:
                return c.infer("swap", {"input": ROWS}, outputs=["label"])["label"].tolist()
        except InferdClientError:
            return None

    assert await eventually(labels, 60, "swap to be served") == first.predict(ROWS).tolist()
    joblib.dump(second, root / ".swap.tmp")
    os.replace(root / ".swap.tmp", root / "swap.joblib")
    want = second.predict(ROWS).tolist()
    assert want != first.predict(ROWS).tolist()
    await eventually(lambda: labels() == want, 60, "the new version's answers")


def test_bad_files_fail_with_a_reason_and_the_rest_serves(served):
    with Client(socket=served.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
        assert c.ready("iris_int") and c.ready("forest")
    assert index["dict"]["state"] == "FAILED"
    assert "builtins.dict, not a scikit-learn estimator" in index["dict"]["reason"]
    assert index["corrupt"]["state"] == "FAILED"
    assert "not a readable joblib/pickle file" in index["corrupt"]["reason"]
    assert index["untrusted"]["state"] == "FAILED"
    assert "sklearn.tree._tree.Tree" in index["untrusted"]["reason"] and "skops_trusted" in index["untrusted"]["reason"]
    assert index["open"]["state"] == "FAILED"
    assert "open is writable by other users" in index["open"]["reason"]


def test_values_the_model_refuses_are_the_callers_fault(served):
    with Client(socket=served.socket_path) as c:
        with pytest.raises(InferdClientError) as e:
            c.infer("frame", {"age": np.array([30.0]), "city": np.array([b"Atlantis"], object)})
        assert e.value.code == "invalid_argument" and "unknown categor" in e.value.message
        with pytest.raises(InferdClientError) as e:
            c.infer("frame", {"age": np.array([30.0]), "city": np.array([b"\xff\xfe"], object)})
        assert e.value.code == "invalid_argument" and "UTF-8" in e.value.message
        with pytest.raises(InferdClientError) as e:
            c.infer("iris_int", {"input": np.zeros((1, 5), np.float32)})
        assert e.value.code == "invalid_argument"
        assert c.infer("frame", {"age": np.array([30.0]), "city": np.array([b"Oslo"], object)})["label"].shape == (1,)


def test_missing_scikit_learn_names_what_to_install(tmp_path, models):
    joblib.dump(models["iris_int"], tmp_path / "m.joblib")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["sklearn"] = None  # import sklearn raises ImportError
        from pathlib import Path
        from inferd.backends.sklearn import SklearnBackend
        try:
            SklearnBackend(Path({str(tmp_path / "m.joblib")!r}), None).load()
        except RuntimeError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "pip install 'inferd[sklearn]'" in out
