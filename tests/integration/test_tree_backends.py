"""The XGBoost, LightGBM and CatBoost backends in real worker processes, driven through the
scheduler in-process, on models the real frameworks fitted and saved here: answers equal the
framework's own predict / predict_proba (float32 probabilities within float32 rounding)."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest
import tree_models

from inferd.backends import backend_path
from inferd.common.errors import ErrorCode, InferdError
from inferd.common.tensors import TensorSpec
from inferd.config.model import ModelSettings
from inferd.daemon.requests import InferRequest
from inferd.scheduler.pool import Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.tickets import FixedLimits
from inferd.scheduler.worker import LoadFailed, WorkerSpec

pytest.importorskip("xgboost")
pytest.importorskip("lightgbm")
pytest.importorskip("catboost")

X = tree_models.data(40)[0]


class Served:
    def __init__(self, pool: WorkerPool, queue: ModelQueue, metadata):
        self.pool, self.queue, self.metadata = pool, queue, metadata

    async def infer(self, x: np.ndarray | dict, outputs: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        inputs = x if isinstance(x, dict) else {"input": x}
        rows = len(next(iter(inputs.values())))
        return await self.queue.submit(InferRequest(inputs, outputs=outputs), rows, tuple(a.shape[1:] for a in inputs.values()))

    async def stop(self) -> None:
        await self.queue.drain()
        await self.pool.stop()


async def _serve(path, backend: str, declared: tuple = (), **settings) -> Served:
    """`declared`: config.toml's [[inputs]]."""
    settings = ModelSettings(**{"min_workers": 1, **settings})
    wakeup = asyncio.Event()
    pool = WorkerPool(WorkerSpec.of(path.stem, "1", path, backend_path(backend), settings, inputs=declared),
                      Scaling.from_settings(settings), on_change=wakeup.set)
    metadata = await pool.start()
    queue = ModelQueue(pool, FixedLimits(64, 1024), output_names=[t.name for t in metadata.outputs], max_delay_s=0.0,
                       wakeup=wakeup)
    queue.start()
    return Served(pool, queue, metadata)


def _specs(metadata) -> tuple[list, list]:
    return ([(t.name, t.datatype, t.shape) for t in metadata.inputs],
            [(t.name, t.datatype, t.shape) for t in metadata.outputs])


@pytest.mark.parametrize("save, backend, ext, platform", [
    (tree_models.save_xgboost, "xgboost", "ubj", "xgboost"),
    (tree_models.save_xgboost, "xgboost", "json", "xgboost"),
    (tree_models.save_lightgbm, "lightgbm", "txt", "lightgbm"),
    (tree_models.save_catboost, "catboost", "cbm", "catboost"),
])
async def test_binary_classifier_matches_the_framework(tmp_path, save, backend, ext, platform):
    model = save("binary", tmp_path / f"model.{ext}")
    served = await _serve(tmp_path / f"model.{ext}", backend)
    try:
        assert served.metadata.platform == platform
        assert _specs(served.metadata) == ([("input", "FP32", (-1, 5))],
                                           [("label", "INT64", (-1,)), ("probabilities", "FP32", (-1, 2))])
        got = await served.infer(X)
        np.testing.assert_array_equal(got["label"], model.predict(X))
        assert got["label"].dtype == np.int64 and got["probabilities"].dtype == np.float32
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), rtol=1e-6, atol=1e-7)
    finally:
        await served.stop()


@pytest.mark.parametrize("save, backend, ext", [
    (tree_models.save_xgboost, "xgboost", "ubj"),
    (tree_models.save_lightgbm, "lightgbm", "txt"),
])
async def test_multiclass_classifier_matches_the_framework(tmp_path, save, backend, ext):
    model = save("multiclass", tmp_path / f"model.{ext}")
    served = await _serve(tmp_path / f"model.{ext}", backend)
    try:
        assert _specs(served.metadata)[1] == [("label", "INT64", (-1,)), ("probabilities", "FP32", (-1, 3))]
        got = await served.infer(X)
        np.testing.assert_array_equal(got["label"], model.predict(X))
        assert set(got["label"].tolist()) == {0, 1, 2}  # the data exercises every class
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), rtol=1e-6, atol=1e-7)
    finally:
        await served.stop()


async def test_catboost_string_classes_answer_bytes_labels(tmp_path):
    model = tree_models.save_catboost("strings", tmp_path / "model.cbm")
    served = await _serve(tmp_path / "model.cbm", "catboost")
    try:
        assert _specs(served.metadata)[1] == [("label", "BYTES", (-1,)), ("probabilities", "FP32", (-1, 3))]
        got = await served.infer(X)
        assert got["label"].tolist() == [s.encode() for s in model.predict(X).reshape(-1)]
        assert {b"cat", b"dog", b"eel"} >= set(got["label"].tolist())
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), rtol=1e-6, atol=1e-7)
    finally:
        await served.stop()


@pytest.mark.parametrize("save, backend, ext", [
    (tree_models.save_xgboost, "xgboost", "ubj"),
    (tree_models.save_lightgbm, "lightgbm", "txt"),
    (tree_models.save_catboost, "catboost", "cbm"),
])
async def test_regressor_matches_the_framework(tmp_path, save, backend, ext):
    model = save("regressor", tmp_path / f"model.{ext}")
    served = await _serve(tmp_path / f"model.{ext}", backend, intra_op_threads=2)
    try:
        assert _specs(served.metadata)[1] == [("prediction", "FP32", (-1,))]
        got = await served.infer(X)
        assert got["prediction"].dtype == np.float32
        np.testing.assert_allclose(got["prediction"], model.predict(X).astype(np.float32), rtol=1e-6, atol=1e-6)
    finally:
        await served.stop()


@pytest.mark.parametrize("save, backend, ext", [
    (tree_models.save_xgboost, "xgboost", "ubj"),
    (tree_models.save_lightgbm, "lightgbm", "txt"),
    (tree_models.save_catboost, "catboost", "cbm"),
])
async def test_asking_for_the_label_alone_leaves_probabilities_out(tmp_path, save, backend, ext):
    model = save("binary", tmp_path / f"model.{ext}")
    served = await _serve(tmp_path / f"model.{ext}", backend)
    try:
        got = await served.infer(X[:3], outputs=("label",))
        assert list(got) == ["label"]
        np.testing.assert_array_equal(got["label"], model.predict(X[:3]))
    finally:
        await served.stop()


async def test_xgboost_multi_softmax_labels_and_probabilities(tmp_path):
    """multi:softmax predicts the class; its probabilities come from the margins."""
    model = tree_models.save_xgboost("multiclass", tmp_path / "model.ubj", objective="multi:softmax")
    served = await _serve(tmp_path / "model.ubj", "xgboost")
    try:
        got = await served.infer(X)
        np.testing.assert_array_equal(got["label"], model.get_booster().inplace_predict(X))
        margin = model.get_booster().inplace_predict(X, predict_type="margin").astype(np.float64)
        want = np.exp(margin) / np.exp(margin).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(got["probabilities"], want, rtol=1e-6)
        np.testing.assert_array_equal(got["label"], np.argmax(got["probabilities"], axis=1))
    finally:
        await served.stop()


async def test_xgboost_named_features_as_columns_when_config_declares_them(tmp_path):
    """A booster with feature names takes one input per column once config.toml's [[inputs]]
    names them (FP64 where declared, FP32 otherwise); without that, the matrix."""
    import xgboost as xgb

    names = [f"f_{i}" for i in range(5)]
    x, binary, _three, _real = tree_models.data()
    model = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(pd.DataFrame(x, columns=names), binary)
    model.save_model(str(tmp_path / "model.ubj"))
    want = model.predict(pd.DataFrame(X, columns=names))
    served = await _serve(tmp_path / "model.ubj", "xgboost", declared=(TensorSpec("f_0", "FP64", (-1,)),))
    try:
        assert _specs(served.metadata)[0] == [("f_0", "FP64", (-1,))] + [(n, "FP32", (-1,)) for n in names[1:]]
        columns = {n: X[:, i].astype(np.float64 if i == 0 else np.float32) for i, n in enumerate(names)}
        np.testing.assert_array_equal((await served.infer(columns))["label"], want)
    finally:
        await served.stop()
    served = await _serve(tmp_path / "model.ubj", "xgboost")  # no [[inputs]]: the matrix
    try:
        assert _specs(served.metadata)[0] == [("input", "FP32", (-1, 5))]
        np.testing.assert_array_equal((await served.infer(X))["label"], want)
    finally:
        await served.stop()


async def test_catboost_categorical_features_come_as_bytes_columns(tmp_path):
    model, frame = tree_models.save_catboost_categorical(tmp_path / "model.cbm")
    served = await _serve(tmp_path / "model.cbm", "catboost", declared=(TensorSpec("colour", "BYTES", (-1,)),))
    try:
        assert _specs(served.metadata)[0] == [("size", "FP32", (-1,)), ("colour", "BYTES", (-1,))]
        colours = np.array([c.encode() for c in frame["colour"]], dtype=object)
        got = await served.infer({"size": frame["size"].to_numpy(), "colour": colours})
        np.testing.assert_array_equal(got["label"], model.predict(frame))
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(frame), rtol=1e-6, atol=1e-7)
        with pytest.raises(InferdError) as e:  # text columns must be UTF-8
            await served.infer({"size": frame["size"].to_numpy()[:1], "colour": np.array([b"\xff\xfe"], dtype=object)})
        assert e.value.code == ErrorCode.INVALID_ARGUMENT and "UTF-8" in str(e.value)
    finally:
        await served.stop()


async def test_catboost_categorical_features_without_declared_columns_fail_to_load(tmp_path):
    tree_models.save_catboost_categorical(tmp_path / "model.cbm")
    pool = WorkerPool(WorkerSpec.of("m", "1", tmp_path / "model.cbm", backend_path("catboost"), ModelSettings(min_workers=1)),
                      Scaling.from_settings(ModelSettings(min_workers=1)))
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    await pool.stop()
    assert "categorical features" in str(e.value) and "[[inputs]]" in str(e.value)


@pytest.mark.parametrize("backend, ext, content, reason", [
    ("xgboost", "ubj", b"{not ubjson", "not an XGBoost model"),
    ("lightgbm", "txt", b"tree\nversion=v4\nnum_class=1\nend of trees\n", "not a LightGBM model"),
    ("catboost", "cbm", b"CBM1garbage" * 10, "not a CatBoost model"),
])
async def test_an_unreadable_model_fails_to_load_with_the_frameworks_reason(tmp_path, backend, ext, content, reason):
    path = tmp_path / f"model.{ext}"
    path.write_bytes(content)
    pool = WorkerPool(WorkerSpec.of("m", "1", path, backend_path(backend), ModelSettings(min_workers=1)),
                      Scaling.from_settings(ModelSettings(min_workers=1)))
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    await pool.stop()
    assert reason in str(e.value)


async def test_a_gpu_device_is_refused_with_a_reason(tmp_path):
    tree_models.save_lightgbm("binary", tmp_path / "model.txt")
    settings = ModelSettings(min_workers=1, device="cuda:0")
    pool = WorkerPool(WorkerSpec.of("m", "1", tmp_path / "model.txt", backend_path("lightgbm"), settings),
                      Scaling.from_settings(settings))
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    await pool.stop()
    assert "run on the CPU" in str(e.value) and "cuda:0" in str(e.value)


@pytest.mark.parametrize("kept", [0.3, 0.6, 0.9])
async def test_a_truncated_lightgbm_file_fails_to_load_without_reaching_lightgbm(tmp_path, kept):
    """LightGBM aborts the process on a text model cut inside its trees: the backend refuses
    such a file first, with a reason, and the same pool then loads the whole file."""
    tree_models.save_lightgbm("binary", tmp_path / "whole.txt")
    text = (tmp_path / "whole.txt").read_bytes()
    (tmp_path / "model.txt").write_bytes(text[: int(len(text) * kept)])
    settings = ModelSettings(min_workers=1)
    pool = WorkerPool(WorkerSpec.of("m", "1", tmp_path / "model.txt", backend_path("lightgbm"), settings),
                      Scaling.from_settings(settings))
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    await pool.stop()
    assert "cut short" in str(e.value) and "end of trees" in str(e.value)


@pytest.mark.parametrize("kept", [0.25, 0.5, 0.99])
async def test_a_truncated_xgboost_ubj_file_fails_to_load_without_reaching_xgboost(tmp_path, kept):
    """XGBoost crashes (or allocates without bound) on a .ubj file cut short: the backend
    refuses such a file first, with a reason."""
    tree_models.save_xgboost("multiclass", tmp_path / "whole.ubj")
    data = (tmp_path / "whole.ubj").read_bytes()
    (tmp_path / "model.ubj").write_bytes(data[: int(len(data) * kept)])
    settings = ModelSettings(min_workers=1)
    pool = WorkerPool(WorkerSpec.of("m", "1", tmp_path / "model.ubj", backend_path("xgboost"), settings),
                      Scaling.from_settings(settings))
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    await pool.stop()
    assert "cut short" in str(e.value) and "not an XGBoost model" in str(e.value)
