"""MLflow model directories end to end: models saved by MLflow itself, dropped into a running
daemon's models directory (as models/<name>/, and as a version models/<name>/<v>/), served by
real workers and called through tritonclient HTTP and the Unix socket; every answer equals
mlflow.pyfunc.load_model(...).predict in-process. Broken ones FAIL with a reason and the rest
serve on."""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("sklearn")
import mlflow_models as saved_models  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from daemon_process import DaemonProcess  # noqa: E402
from grpc_infer import grpc_infer  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402
from waiting import eventually  # noqa: E402

from inferd.client import Client, InferdClientError  # noqa: E402

WORDS = saved_models.WORDS
TEXT = np.array([s.encode() for s in WORDS.text], dtype=object)


def _predict(path, model_input):
    import mlflow.pyfunc

    with saved_models.quiet():
        return mlflow.pyfunc.load_model(str(path)).predict(model_input)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The MLflow directories, saved once outside the models directory."""
    root = tmp_path_factory.mktemp("saved")
    paths = [saved_models.pyfunc_words(root), saved_models.pyfunc_words(root, signature=False),
             saved_models.sklearn_frame(root), saved_models.sklearn_matrix(root)]
    return {p.name: saved_models.no_others_write(p) for p in paths}


@pytest.fixture(scope="module")
def served(tmp_path_factory, made):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(made["words"], root / "words")  # models/<name>/ holding MLmodel: version 1
    shutil.copytree(made["sklearn_frame"], root / "frame" / "2")  # a version directory holding MLmodel
    shutil.copytree(made["sklearn_matrix"], root / "matrix")  # its requirements.txt names a bogus package
    shutil.copytree(made["words_unsigned"], root / "unsigned")
    saved_models.missing_flavor(shutil.copytree(made["words"], root / "missing"))
    shutil.copytree(made["words"], root / "open")
    os.chmod(root / "open" / "python_model.pkl", 0o666)  # anyone could swap the pickle: it must not run
    with DaemonProcess(root) as d:
        yield d


def test_metadata_shows_the_signatures_tensors(served):
    words = served.http_json("/v2/models/words")
    assert words["platform"] == "mlflow"
    assert [(t["name"], t["datatype"], t["shape"]) for t in words["inputs"]] == [("text", "BYTES", [-1]),
                                                                                ("times", "INT64", [-1])]
    assert [t["name"] for t in words["outputs"]] == ["words", "shout"]
    frame = served.http_json("/v2/models/frame/versions/2")
    assert [(t["name"], t["datatype"]) for t in frame["inputs"]] == [("a", "INT64"), ("b", "FP64")]


def test_a_python_function_model_over_http_matches_predict(served, made):
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    text = httpclient.InferInput("text", [len(TEXT)], "BYTES")
    text.set_data_from_numpy(TEXT)
    times = httpclient.InferInput("times", [len(TEXT)], "INT64")
    times.set_data_from_numpy(WORDS.times.to_numpy())
    result = client.infer("words", [text, times])
    expected = _predict(made["words"], WORDS)
    np.testing.assert_array_equal(result.as_numpy("words"), expected.words.to_numpy())
    assert result.as_numpy("shout").tolist() == [s.encode() for s in expected.shout]


def test_sklearn_flavors_over_the_unix_socket_match_predict(served, made):
    frame, matrix = saved_models.FRAME, saved_models.MATRIX
    with Client(socket=served.socket_path) as c:
        out = c.infer("frame", {"a": frame.a.to_numpy(), "b": frame.b.to_numpy()})
        predicted = out.get("label", out.get("output"))  # sklearn's own backend, or python_function
        np.testing.assert_array_equal(predicted, _predict(made["sklearn_frame"], frame))
        out = c.infer("matrix", {"input": matrix})
        predicted = out.get("prediction", out.get("output"))
        np.testing.assert_allclose(predicted, _predict(made["sklearn_matrix"], matrix), rtol=1e-6)
    assert importlib.util.find_spec(saved_models.BOGUS_REQUIREMENT.replace("-", "_")) is None  # never installed


def test_a_python_function_model_over_grpc_matches_predict(served, made):
    out = grpc_infer(served, "words", {"text": TEXT, "times": WORDS.times.to_numpy()})
    expected = _predict(made["words"], WORDS)
    np.testing.assert_array_equal(out["words"], expected.words.to_numpy())
    assert out["shout"].tolist() == [s.encode() for s in expected.shout]


async def test_a_directory_dropped_into_the_running_daemon_is_served(served, made):
    staging = served.models / ".staging"
    shutil.copytree(made["words"], staging)
    os.replace(staging, served.models / "dropped")

    def answer():
        try:
            with Client(socket=served.socket_path) as c:
                return c.infer("dropped", {"text": TEXT[:1], "times": np.array([5])})["words"].tolist()
        except InferdClientError:
            return None

    assert await eventually(answer, 60, "the dropped MLflow model to be served") == [10]


def test_broken_directories_fail_with_a_reason_and_the_rest_serve(served):
    with Client(socket=served.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
        assert c.ready("words") and c.ready("matrix")
    assert index["missing"]["state"] == "FAILED"
    assert "'no_such_flavor' flavor needs the Python package 'inferd_no_such_flavor'" in index["missing"]["reason"]
    assert index["unsigned"]["state"] == "FAILED"
    assert "no signature inputs" in index["unsigned"]["reason"]
    assert index["open"]["state"] == "FAILED"
    assert "writable by other users" in index["open"]["reason"]


def test_bad_requests_are_refused_and_the_model_serves_on(served):
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))

    def call(text, times, times_type="INT64"):
        inputs = [httpclient.InferInput("text", [len(text)], "BYTES"),
                  httpclient.InferInput("times", [len(times)], times_type)]
        inputs[0].set_data_from_numpy(text)
        inputs[1].set_data_from_numpy(times)
        return client.infer("words", inputs)

    with pytest.raises(InferenceServerException) as e:  # the model's own code raises
        call(TEXT[:1], np.array([-1], np.int64))
    assert e.value.status() == "500" and "times must not be negative" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        call(np.array([b"\xff\xfe"], dtype=object), np.array([1], np.int64))
    assert e.value.status() == "400" and "UTF-8" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        call(TEXT[:1], np.array([1.5], np.float32), "FP32")
    assert e.value.status() == "400"
    assert call(TEXT[:1], np.array([3], np.int64)).as_numpy("words").tolist() == [6]
