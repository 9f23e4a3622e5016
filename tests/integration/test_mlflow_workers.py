"""MLflow model directories (inferd.backends.mlflow) in real worker processes, behind the real
scheduler: models saved by MLflow itself, answers equal to mlflow.pyfunc.load_model(...).predict,
and the loads that must fail with a reason (a missing flavor package, others' write access, a
broken MLmodel, no signature for python_function)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("sklearn")
import mlflow_models as models  # noqa: E402

from inferd.backends import backend_path  # noqa: E402
from inferd.common.errors import ErrorCode, InferdError  # noqa: E402
from inferd.config.model import ModelSettings  # noqa: E402
from inferd.daemon.requests import InferRequest  # noqa: E402
from inferd.scheduler.pool import Scaling, WorkerPool  # noqa: E402
from inferd.scheduler.queue import ModelQueue  # noqa: E402
from inferd.scheduler.tickets import FixedLimits  # noqa: E402
from inferd.scheduler.worker import LoadFailed, WorkerSpec  # noqa: E402

# Where helper S's scikit-learn backend is present, the sklearn flavor runs on it (label and
# probabilities); otherwise through python_function (the signature's one output).
NATIVE_SKLEARN = importlib.util.find_spec("inferd.backends.sklearn") is not None


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    made = [f(root) for f in (models.sklearn_frame, models.sklearn_matrix, models.pyfunc_words, models.onnx_add)]
    made.append(models.pyfunc_words(root, signature=False))
    return {path.name: models.no_others_write(path) for path in made}


def _copy(saved, name: str, tmp_path):
    return models.no_others_write(shutil.copytree(saved[name], tmp_path / name))


def _reference(path, model_input):
    import mlflow.pyfunc

    with models.quiet():
        return mlflow.pyfunc.load_model(str(path)).predict(model_input)


def _pool(path) -> WorkerPool:
    settings = ModelSettings(min_workers=1, max_batch_size=8)
    spec = WorkerSpec.of(path.name, "1", path, backend_path("mlflow"), settings)
    return WorkerPool(spec, Scaling.from_settings(settings), on_change=lambda: None)


async def _served(path):
    wakeup = asyncio.Event()
    pool = _pool(path)
    pool.on_change = wakeup.set
    metadata = await pool.start()
    queue = ModelQueue(pool, FixedLimits(8, 64), output_names=[t.name for t in metadata.outputs],
                       max_delay_s=0.0, wakeup=wakeup)
    queue.start()
    return queue, pool, metadata


async def _infer(path, inputs: dict[str, np.ndarray]):
    """The model's metadata and its answer to one request (or the InferdError)."""
    queue, pool, metadata = await _served(path)
    try:
        rows = len(next(iter(inputs.values())))
        shapes = tuple(a.shape[1:] for a in inputs.values())
        async with asyncio.timeout(60):
            try:
                return metadata, await queue.submit(InferRequest(inputs), rows, shapes)
            except InferdError as e:
                return metadata, e
    finally:
        async with asyncio.timeout(30):
            await queue.drain()
        await pool.stop()


async def _load_failure(path) -> str:
    pool = _pool(path)
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    assert pool.pids == []
    return e.value.reason


def _tensors(metadata):
    return [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs], [t.name for t in metadata.outputs]


async def test_sklearn_fitted_on_a_frame_takes_one_tensor_per_column(saved):
    frame = models.FRAME
    metadata, answer = await _infer(saved["sklearn_frame"], {"a": frame.a.to_numpy(), "b": frame.b.to_numpy()})
    inputs, outputs = _tensors(metadata)
    assert metadata.platform == "mlflow" and inputs == [("a", "INT64", [-1]), ("b", "FP64", [-1])]
    predicted = answer["label"] if NATIVE_SKLEARN else answer["output"]
    np.testing.assert_array_equal(predicted, _reference(saved["sklearn_frame"], frame))
    assert outputs == (["label", "probabilities"] if NATIVE_SKLEARN else ["output"])


async def test_sklearn_fitted_on_a_matrix_takes_the_signatures_tensor(saved):
    metadata, answer = await _infer(saved["sklearn_matrix"], {"input": models.MATRIX})
    assert _tensors(metadata)[0] == [("input", "FP32", [-1, 2])]
    predicted = answer["prediction"] if NATIVE_SKLEARN else answer["output"]
    np.testing.assert_allclose(predicted, _reference(saved["sklearn_matrix"], models.MATRIX), rtol=1e-6)


async def test_a_python_function_model_takes_and_answers_columns(saved):
    words = models.WORDS
    text = np.array([s.encode() for s in words.text], dtype=object)
    metadata, answer = await _infer(saved["words"], {"text": text, "times": words.times.to_numpy()})
    assert _tensors(metadata) == ([("text", "BYTES", [-1]), ("times", "INT64", [-1])], ["words", "shout"])
    expected = _reference(saved["words"], words)
    np.testing.assert_array_equal(answer["words"], expected.words.to_numpy())
    assert list(answer["shout"]) == [s.encode() for s in expected.shout]


async def test_an_onnx_flavor_runs_on_the_onnx_backend_with_the_graphs_tensors(saved):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    metadata, answer = await _infer(saved["onnx_add"], {"x": x})
    assert _tensors(metadata) == ([("x", "FP32", [-1, 3])], ["y"])  # (no signature: the graph's own)
    np.testing.assert_array_equal(answer["y"], _reference(saved["onnx_add"], {"x": x})["y"])


async def test_the_model_codes_error_fails_the_request_and_the_worker_serves_on(saved):
    queue, pool, _ = await _served(saved["words"])
    try:
        async with asyncio.timeout(60):
            bad = InferRequest({"text": np.array([b"x y"], dtype=object), "times": np.array([-1])})
            with pytest.raises(InferdError) as e:
                await queue.submit(bad, 1, ((), ()))
            assert e.value.code is ErrorCode.INTERNAL and "times must not be negative" in e.value.message
            not_text = InferRequest({"text": np.array([b"\xff\xfe"], dtype=object), "times": np.array([1])})
            with pytest.raises(InferdError) as e:
                await queue.submit(not_text, 1, ((), ()))
            assert e.value.code is ErrorCode.INVALID_ARGUMENT and "UTF-8" in e.value.message
            good = InferRequest({"text": np.array([b"one two"], dtype=object), "times": np.array([2])})
            answer = await queue.submit(good, 1, ((), ()))
            assert list(answer["words"]) == [4]
    finally:
        await queue.drain()
        await pool.stop()


async def test_requirements_txt_is_never_installed(saved):
    assert models.BOGUS_REQUIREMENT in (saved["sklearn_matrix"] / "requirements.txt").read_text()
    metadata, answer = await _infer(saved["sklearn_matrix"], {"input": models.MATRIX[:2]})
    assert len(next(iter(answer.values()))) == 2  # it loads and serves without it
    assert importlib.util.find_spec(models.BOGUS_REQUIREMENT.replace("-", "_")) is None


async def test_a_flavor_whose_package_is_missing_fails_naming_it(saved, tmp_path):
    reason = await _load_failure(models.missing_flavor(_copy(saved, "words", tmp_path)))
    assert "'no_such_flavor' flavor needs the Python package 'inferd_no_such_flavor'" in reason
    assert "never installs" in reason


async def test_an_mlflow_flavor_whose_framework_is_not_installed_fails_naming_it(saved, tmp_path):
    pytest.importorskip("mlflow.prophet")  # MLflow's own flavor module, importable without prophet
    assert importlib.util.find_spec("prophet") is None

    def prophet(document):
        document["flavors"] = {"python_function": {"loader_module": "mlflow.prophet", "model_path": "python_model.pkl"},
                               "prophet": {"model_path": "python_model.pkl"}}
    reason = await _load_failure(models.edit_mlmodel(_copy(saved, "words", tmp_path), prophet))
    assert "'prophet' flavor needs the Python package 'prophet'" in reason


async def test_a_directory_writable_by_others_is_refused(saved, tmp_path):
    path = _copy(saved, "words", tmp_path)
    os.chmod(path / "python_model.pkl", 0o666)
    assert "writable by other users" in await _load_failure(path)


async def test_python_function_without_a_signature_asks_for_one(saved):
    reason = await _load_failure(saved["words_unsigned"])
    assert "has no signature inputs" in reason and "config.toml" in reason


@pytest.mark.parametrize("content, expected", [
    (b"flavors: [unclosed", "not valid YAML"),
    (b"just a string", "names no flavors"),
    (b"flavors: {}\n" + b"#" * (1 << 20), "over 1048576 bytes"),
    (b"flavors: {onnx: {data: ../../etc/passwd}}", "outside the model's directory"),
    (b"flavors: {python_function: {loader_module: mlflow.pyfunc.model}}\nsignature: {inputs: '[{\"type\": "
     b"\"datetime\", \"name\": \"when\"}]', outputs: '[{\"type\": \"long\"}]'}", "'datetime', which the V2"),
])
async def test_a_broken_mlmodel_fails_the_load_with_the_reason(saved, tmp_path, content, expected):
    path = _copy(saved, "words", tmp_path)
    (path / "MLmodel").write_bytes(content)
    assert expected in await _load_failure(path)


def _native(key: str) -> bool:
    return importlib.util.find_spec(f"inferd.backends.{key}") is not None


async def test_an_xgboost_flavor_matches_predict(tmp_path):
    pytest.importorskip("xgboost")
    path = models.no_others_write(models.xgboost_classifier(tmp_path))
    metadata, answer = await _infer(path, {"input": models.MATRIX})
    assert _tensors(metadata)[0] == [("input", "FP32", [-1, 2])]
    predicted = answer["label"] if _native("xgboost") else answer["output"]  # XGBoost's backend, or python_function
    np.testing.assert_array_equal(predicted, _reference(path, models.MATRIX))


async def test_a_lightgbm_flavor_takes_columns_and_matches_predict(tmp_path):
    pytest.importorskip("lightgbm")
    path = models.no_others_write(models.lightgbm_booster(tmp_path))
    frame = models.FRAME
    metadata, answer = await _infer(path, {"a": frame.a.to_numpy(), "b": frame.b.to_numpy()})
    assert _tensors(metadata)[0] == [("a", "INT64", [-1]), ("b", "FP64", [-1])]
    predicted = answer["prediction"] if _native("lightgbm") else answer["output"]
    np.testing.assert_allclose(predicted, _reference(path, frame), rtol=1e-5)


async def test_a_keras_flavor_matches_predict(tmp_path):
    pytest.importorskip("tensorflow")
    path = models.no_others_write(models.keras_dense(tmp_path))
    x = models.MATRIX[:4, :1].repeat(3, axis=1)
    metadata, answer = await _infer(path, {"input": x})
    assert _tensors(metadata)[0] == [("input", "FP32", [-1, 3])]  # the signature's (unnamed) tensor
    predicted = answer["scores"] if _native("tensorflow") else answer["output"]  # the Dense layer's output
    np.testing.assert_allclose(predicted, _reference(path, x), rtol=1e-5)
