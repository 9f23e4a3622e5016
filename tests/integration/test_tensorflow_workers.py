"""TensorFlow models in real worker processes, driven in-process through the scheduler.
SavedModel directories: tensors from the serving signature (or the one [parameters] names),
answers equal to the tf.Module's own call, one-row requests batched, BYTES, a value the graph
refuses, no serving signature, a corrupt directory. Keras: every subset of outputs a caller
may ask for, past the backend's cap on traced sub-models."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import numpy as np
import pytest
import pytest_asyncio

from inferd.backends import backend_path
from inferd.common.errors import ErrorCode, InferdError
from inferd.config.model import ModelSettings
from inferd.daemon.requests import InferRequest
from inferd.scheduler.pool import PoolObserver, Scaling, WorkerPool
from inferd.scheduler.queue import ModelQueue
from inferd.scheduler.tickets import FixedLimits, QueueObserver
from inferd.scheduler.worker import LoadFailed, WorkerSpec

tf = pytest.importorskip("tensorflow", reason="the TensorFlow backend's tests need tensorflow-cpu (the test extra)")

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one worker (one TensorFlow import) for the module


class Scorer(tf.Module):
    """Three inputs of three types; an output each, so names and types are checked."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.random.default_rng(3).standard_normal((3, 2)).astype(np.float32))
        self.table = tf.constant([10, 20, 30], tf.int64)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None], tf.int64)])
    def serve(self, x, text, index):
        return {"y": tf.matmul(x, self.w), "length": tf.strings.length(text), "looked_up": tf.gather(self.table, index)}


class Batches(QueueObserver, PoolObserver):
    def __init__(self):
        self.rows: list[int] = []

    def batch_done(self, requests, rows, compute_s, ok):
        self.rows.append(rows)


def _pool(path, observer=None, **declared) -> WorkerPool:
    settings = ModelSettings(min_workers=1, intra_op_threads=1)
    spec = WorkerSpec.of("scorer", "1", path, backend_path("tensorflow"), settings, **declared)
    return WorkerPool(spec, Scaling.from_settings(settings), observer=observer, on_change=lambda: None)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    module = Scorer()
    path = tmp_path_factory.mktemp("tf") / "scorer" / "1" / "model.savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return module, path


@contextlib.asynccontextmanager
async def _serving(path, **declared):
    """(the pool's metadata, a queue that holds requests 50 ms for a fuller batch, its batches)."""
    batches = Batches()
    pool = _pool(path, batches, **declared)
    metadata = await pool.start()
    queue = ModelQueue(pool, FixedLimits(64, 1024), output_names=[t.name for t in metadata.outputs], max_delay_s=0.05,
                       wakeup=asyncio.Event(), retry_crashed=True, observer=batches)
    queue.start()
    try:
        yield metadata, queue, batches
    finally:
        await queue.drain()
        await pool.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(scorer):
    async with _serving(scorer[1]) as serving:
        yield serving


def _request(x, text, index, outputs=None) -> InferRequest:
    return InferRequest({"x": x, "text": text, "index": index}, outputs=outputs)


async def test_tensors_come_from_the_serving_signature(served):
    metadata = served[0]
    assert metadata.platform == "tensorflow_savedmodel"
    assert [(t.name, t.datatype, t.shape) for t in metadata.inputs] == [
        ("index", "INT64", (-1,)), ("text", "BYTES", (-1,)), ("x", "FP32", (-1, 3))]
    assert [(t.name, t.datatype, t.shape) for t in metadata.outputs] == [
        ("length", "INT32", (-1,)), ("looked_up", "INT64", (-1,)), ("y", "FP32", (-1, 2))]
    assert metadata.batchable


async def test_answers_equal_the_modules_own_call(served, scorer):
    x = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
    text = np.array([b"", b"abc", "ünï".encode(), b"\x00\xff"], dtype=object)
    index = np.array([2, 0, 1, 2], np.int64)
    got = await served[1].submit(_request(x, text, index), 4, "k")
    want = {k: v.numpy() for k, v in scorer[0].serve(tf.constant(x), tf.constant(text), tf.constant(index)).items()}
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)
    np.testing.assert_array_equal(got["length"], [0, 3, 5, 2])
    np.testing.assert_array_equal(got["looked_up"], [30, 10, 20, 30])


async def test_one_output_asked_for_is_the_one_answered(served):
    x, text, index = np.ones((1, 3), np.float32), np.array([b"ab"], object), np.array([1], np.int64)
    got = await served[1].submit(_request(x, text, index, outputs=("length",)), 1, "k")
    assert set(got) == {"length"}
    np.testing.assert_array_equal(got["length"], [2])


async def test_concurrent_one_row_requests_run_as_fewer_batches(served, scorer):
    _, queue, batches = served
    before = len(batches.rows)
    rows = [np.full((1, 3), i, np.float32) for i in range(12)]
    answers = await asyncio.gather(*(queue.submit(_request(r, np.array([b"x" * i], object), np.array([i % 3])), 1, "k")
                                     for i, r in enumerate(rows)))
    for i, (r, got) in enumerate(zip(rows, answers)):
        np.testing.assert_allclose(got["y"], scorer[0].w.numpy().T.dot(r[0])[None], rtol=1e-5)
        np.testing.assert_array_equal(got["length"], [i])
    ran = batches.rows[before:]
    assert sum(ran) == 12 and len(ran) < 12


async def test_a_value_the_graph_refuses_is_the_callers_error(served):
    x, text = np.ones((1, 3), np.float32), np.array([b"a"], object)
    with pytest.raises(InferdError) as e:
        await served[1].submit(_request(x, text, np.array([7], np.int64)), 1, "k")  # the table has 3 rows
    assert e.value.code is ErrorCode.INVALID_ARGUMENT and "refused" in e.value.message
    got = await served[1].submit(_request(x, text, np.array([0], np.int64)), 1, "k")  # the worker still serves
    np.testing.assert_array_equal(got["looked_up"], [10])


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory):
    """A SavedModel whose only signature is not serving_default."""
    module = Scorer()
    path = tmp_path_factory.mktemp("tf") / "m" / "1" / "model.savedmodel"
    tf.saved_model.save(module, str(path), signatures={"score": module.serve})
    return module, path


async def test_a_savedmodel_without_a_serving_signature_fails_to_load_saying_so(unnamed):
    pool = _pool(unnamed[1])
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    assert "'serving_default'" in e.value.reason and "['score']" in e.value.reason
    assert "[parameters] signature" in e.value.reason
    assert pool.pids == []


async def test_parameters_name_the_signature_to_serve(unnamed):
    x, text, index = np.ones((2, 3), np.float32), np.array([b"a", b"bc"], object), np.array([0, 2], np.int64)
    async with _serving(unnamed[1], parameters={"signature": "score"}) as (metadata, queue, _):
        assert [t.name for t in metadata.outputs] == ["length", "looked_up", "y"]
        got = await queue.submit(_request(x, text, index), 2, "k")
    want = unnamed[0].serve(tf.constant(x), tf.constant(text), tf.constant(index))
    np.testing.assert_allclose(got["y"], want["y"].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(got["looked_up"], [10, 30])


async def test_a_corrupt_savedmodel_fails_to_load(tmp_path):
    path = tmp_path / "m" / "1" / "model.savedmodel"
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"\x00 not a protobuf")
    pool = _pool(path)
    with pytest.raises(LoadFailed) as e:
        await pool.start()
    assert "Cannot parse" in e.value.reason and "SavedModel" in e.value.reason and pool.pids == []


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")  # Keras' save
async def test_every_subset_of_a_keras_models_outputs_equals_its_call(tmp_path):
    """Four outputs: 15 subsets, more than the backend traces sub-models for; each answer is
    the model's own, in the outputs asked for."""
    keras = pytest.importorskip("keras")
    x_in = keras.Input((3,), name="x")
    heads = [keras.layers.Dense(i + 1, name=f"head{i}")(x_in) for i in range(4)]
    model = keras.Model(x_in, heads)
    model.save(tmp_path / "heads.keras")
    x = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    want = dict(zip([f"head{i}" for i in range(4)], (t.numpy() for t in model(x))))
    async with _serving(tmp_path / "heads.keras") as (metadata, queue, _):
        assert [(t.name, t.shape) for t in metadata.outputs] == [(f"head{i}", (-1, i + 1)) for i in range(4)]
        for n in range(1, 5):
            for subset in itertools.combinations(want, n):
                got = await queue.submit(InferRequest({"x": x}, outputs=subset), 2, "k")
                assert set(got) == set(subset)
                for name in subset:
                    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
