"""Keras .keras files end to end: models the tests build with real Keras, served by the real
daemon in real worker processes, called over HTTP (tritonclient) and the Unix socket
(inferd.client) and compared with the model's own call; files Keras refuses (not a .keras
archive, a Lambda layer's Python code under safe_mode) fail with their reason while the rest
serves. (SavedModel directories: tests/integration/test_tensorflow_workers.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from grpc_infer import grpc_infer
from test_workers import metric
from tritonclient.utils import InferenceServerException

from inferd.client import AsyncClient, Client, InferdClientError

tf = pytest.importorskip("tensorflow", reason="the TensorFlow backend's tests need tensorflow-cpu (the test extra)")
keras = pytest.importorskip("keras")

# Keras 3.15 saves a variable with np.array(v), which TensorFlow's Variable answers in numpy 1's way.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

RNG = np.random.default_rng(11)


def _regressor():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(1, name="price")])


def _two_inputs():
    """Two inputs, two outputs: names and the order they are asked for are checked."""
    keras.utils.set_random_seed(2)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    hidden = keras.layers.Dense(8, activation="relu")(joined)
    return keras.Model([a, b], [keras.layers.Dense(1, name="score")(hidden),
                                keras.layers.Dense(4, activation="softmax", name="classes")(hidden)])


# A SavedModel with a serving signature (a float matrix and a string tensor in), saved by a fresh
# interpreter: in the whole suite's process, TensorFlow's tracing of it broke once other test
# modules had run first (autograph: "tf____init__() takes 1 positional argument").
SCORER_WEIGHTS = np.random.default_rng(3).standard_normal((3, 2)).astype(np.float32)
SAVE_SCORER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(3).standard_normal((3, 2)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None], tf.string)])
        def serve(self, x, text):
            return {"y": tf.matmul(x, self.w), "length": tf.strings.length(text)}

    scorer = Scorer()
    tf.saved_model.save(scorer, sys.argv[1], signatures={"serving_default": scorer.serve})
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras")
    regressor, two = _regressor(), _two_inputs()
    regressor.save(root / "regressor.keras")  # a lone file
    (root / "two" / "1").mkdir(parents=True)
    two.save(root / "two" / "1" / "model.keras")
    (root / "two" / "config.toml").write_text("max_batch_size = 32\nmax_queue_delay_ms = 50\nintra_op_threads = 1\n")
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)]).save(root / "lambda.keras")
    (root / "corrupt.keras").write_bytes(b"not a zip archive at all")
    done = subprocess.run([sys.executable, "-c", SAVE_SCORER, str(root / "scorer" / "1" / "model.savedmodel")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, {"regressor": regressor, "two": two}


@pytest.fixture(scope="module")
def served(models):
    d = DaemonProcess(models[0]).start(timeout=300)  # each worker imports TensorFlow (seconds each)
    yield d
    d.stop()


def _http(d: DaemonProcess):
    return httpclient.InferenceServerClient(d.url.removeprefix("http://"))


def _input(name: str, array: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_keras_regressor_over_http_equals_the_models_call(served, models):
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    client = _http(served)
    result = client.infer("regressor", [_input("features", x)])
    client.close()
    np.testing.assert_allclose(result.as_numpy("price"), models[1]["regressor"](x).numpy(), rtol=1e-5, atol=1e-6)


def test_keras_regressor_over_grpc_equals_the_models_call(served, models):
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    out = grpc_infer(served, "regressor", {"features": x})
    np.testing.assert_allclose(out["price"], models[1]["regressor"](x).numpy(), rtol=1e-5, atol=1e-6)


def test_keras_metadata_comes_from_the_model(served):
    meta = served.http_json("/v2/models/two")
    assert meta["platform"] == "keras"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("a", "FP32", [-1, 3]), ("b", "FP32", [-1, 2])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("score", "FP32", [-1, 1]), ("classes", "FP32", [-1, 4])]


def test_two_input_model_over_the_unix_socket(served, models):
    a, b = RNG.standard_normal((3, 3)).astype(np.float32), RNG.standard_normal((3, 2)).astype(np.float32)
    score, classes = (t.numpy() for t in models[1]["two"]([a, b]))
    with Client(socket=served.socket_path) as c:
        got = c.infer("two", {"a": a, "b": b})
        only = c.infer("two", {"a": a, "b": b}, outputs=["classes"])  # a sub-model: the score layer does not run
    np.testing.assert_allclose(got["score"], score, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["classes"], classes, rtol=1e-5, atol=1e-6)
    assert set(only) == {"classes"}
    np.testing.assert_allclose(only["classes"], classes, rtol=1e-5, atol=1e-6)


async def test_concurrent_one_row_requests_batch_together(served, models):
    before = metric(served, "inferd_batch_size_count", model="two")
    rows = [(RNG.standard_normal((1, 3)).astype(np.float32), RNG.standard_normal((1, 2)).astype(np.float32)) for _ in range(16)]
    async with AsyncClient(socket=served.socket_path) as c:
        answers = await asyncio.gather(*(c.infer("two", {"a": a, "b": b}) for a, b in rows))
    for (a, b), got in zip(rows, answers):
        np.testing.assert_allclose(got["score"], models[1]["two"]([a, b])[0].numpy(), rtol=1e-5, atol=1e-6)
    batches = metric(served, "inferd_batch_size_count", model="two") - before
    assert 1 <= batches < 16


@pytest.mark.parametrize(("model", "reason"), [
    ("corrupt", "corrupt.keras is not a .keras file"),
    ("lambda", "Lambda"),
])
def test_files_keras_refuses_fail_with_the_reason_and_the_rest_serves(served, model, reason):
    with Client(socket=served.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
        assert index[model]["state"] == "FAILED"
        assert reason in index[model]["reason"]
        with pytest.raises(InferdClientError) as e:
            c.infer(model, {"x": np.zeros((1, 4), np.float32)})
        assert e.value.code == "unavailable"
        assert c.ready("regressor")
    if model == "lambda":
        assert "safe_mode" in index[model]["reason"] and "SavedModel" in index[model]["reason"]


def test_wrong_input_type_and_shape_are_refused_and_the_model_serves(served, models):
    client = _http(served)
    wrong_type = httpclient.InferInput("features", [1, 4], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 4), np.float64))
    for tensor in (wrong_type, _input("features", np.zeros((1, 5), np.float32))):
        with pytest.raises(InferenceServerException) as e:
            client.infer("regressor", [tensor])
        assert e.value.status() == "400" and "features" in str(e.value)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(client.infer("regressor", [_input("features", x)]).as_numpy("price"),
                               models[1]["regressor"](x).numpy(), rtol=1e-5, atol=1e-6)
    client.close()


def test_tensorflow_missing_names_what_to_install(models):
    """Without tensorflow (its import made to fail in a fresh interpreter) the load's reason
    says what to install."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None  # import tensorflow raises ImportError
        from pathlib import Path
        from inferd.backends.tensorflow import TensorFlowBackend
        try:
            TensorFlowBackend(Path({str(models[0] / "regressor.keras")!r}), {{}}).load()
        except RuntimeError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "pip install 'inferd[tensorflow]'" in out


def test_savedmodel_directory_over_http_and_the_unix_socket(served, models):
    """scorer/1/model.savedmodel/ (Triton's layout): found by the scan, tensors from its serving
    signature, answers equal to the tf.Module's computation through both front-ends."""
    meta = served.http_json("/v2/models/scorer")
    assert meta["platform"] == "tensorflow_savedmodel"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("text", "BYTES", [-1]), ("x", "FP32", [-1, 3])]
    x, text = RNG.standard_normal((2, 3)).astype(np.float32), np.array([b"abc", b""], dtype=object)
    want = {"y": x @ SCORER_WEIGHTS}
    client = _http(served)
    words = httpclient.InferInput("text", [2], "BYTES")
    words.set_data_from_numpy(text)
    result = client.infer("scorer", [_input("x", x), words])
    client.close()
    np.testing.assert_allclose(result.as_numpy("y"), want["y"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("length"), [3, 0])
    with Client(socket=served.socket_path) as c:
        got = c.infer("scorer", {"x": x, "text": text}, outputs=["y"])
    assert set(got) == {"y"}
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
