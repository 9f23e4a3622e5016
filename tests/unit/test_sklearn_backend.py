"""The scikit-learn backend in-process, on estimators fitted here: the tensors it reports for
the shapes of models the e2e tests do not serve (several targets, whole-number float classes,
a clusterer), and its refusals of a bad skops_trusted setting."""

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.cluster import KMeans
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from inferd.backends.settings import BackendSettings
from inferd.backends.sklearn import SklearnBackend
from inferd.common.tensors import TensorSpec

RNG = np.random.default_rng(3)
X = RNG.standard_normal((40, 3))


def _settings(parameters=None, threads=0) -> BackendSettings:
    return BackendSettings(model_dir="/m", max_batch_size=64, device="cpu", gpu=None, intra_op_threads=threads,
                           intra_op_spinning=False, inputs=(), outputs=(), parameters=parameters or {}, decoupled=None,
                           model_config=None, daemon_socket="", metrics_dir="", reshape={}, optional_inputs=())


def _served(tmp_path, model, name="m.joblib", parameters=None) -> tuple[SklearnBackend, tuple]:
    joblib.dump(model, tmp_path / name) if name.endswith(".joblib") else sio.dump(model, tmp_path / name)
    backend = SklearnBackend(tmp_path / name, _settings(parameters))
    return backend, backend.load().outputs


def test_several_targets_are_one_prediction_row_each(tmp_path):
    model = make_pipeline(StandardScaler(), LinearRegression()).fit(X, np.c_[X[:, 0], X[:, 1] * 2])
    backend, outputs = _served(tmp_path, model)
    assert outputs == (TensorSpec("prediction", "FP32", (-1, 2)),)
    got = backend.execute({"input": X[:4].astype(np.float32)}, ["prediction"])["prediction"]
    np.testing.assert_allclose(got, model.predict(X[:4].astype(np.float32)), rtol=1e-5)


def test_whole_number_float_classes_are_int64_labels(tmp_path):
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(np.float64))
    backend, outputs = _served(tmp_path, model)
    assert outputs[0] == TensorSpec("label", "INT64", (-1,))
    got = backend.execute({"input": X[:6].astype(np.float32)}, ["label"])["label"]
    assert got.dtype == np.int64 and got.tolist() == model.predict(X[:6].astype(np.float32)).astype(int).tolist()


@pytest.mark.parametrize("fitted_on", [np.float64, np.float32])
def test_a_clusterer_answers_a_prediction_whatever_floats_it_was_fitted_on(tmp_path, fitted_on):
    """KMeans refuses rows of other floats than it was fitted on (scikit-learn 1.9)."""
    model = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X.astype(fitted_on))
    backend, outputs = _served(tmp_path, model)
    assert outputs == (TensorSpec("prediction", "FP32", (-1,)),)
    rows = X[:8].astype(np.float32)
    for _ in range(2):  # the second batch goes straight to the floats that worked
        got = backend.execute({"input": rows}, ["prediction"])["prediction"]
        assert got.tolist() == model.predict(rows.astype(fitted_on)).tolist()
    assert backend._floats == fitted_on


def test_a_safe_skops_file_needs_no_trust_and_a_bad_setting_is_refused(tmp_path):
    model = LogisticRegression().fit(X, X[:, 0] > 0)
    backend, outputs = _served(tmp_path, model, "m.skops")
    assert [t.name for t in outputs] == ["label", "probabilities"]
    with pytest.raises(RuntimeError, match="skops_trusted must be a list"):
        _served(tmp_path, model, "n.skops", {"skops_trusted": "sklearn.tree._tree.Tree"})


def test_intra_op_threads_limits_the_thread_pools_until_unload(tmp_path):
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_info

    joblib.dump(HistGradientBoostingRegressor(max_iter=5).fit(X, X[:, 0]), tmp_path / "m.joblib")
    before = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
    backend = SklearnBackend(tmp_path / "m.joblib", _settings(threads=1))
    backend.load()
    assert {p["num_threads"] for p in threadpool_info()} == {1}
    backend.unload()
    assert {p["filepath"]: p["num_threads"] for p in threadpool_info()} == before


class NoProbabilitiesToday(LogisticRegression):
    """Has predict_proba (so the model offers "probabilities"), but calling it fails."""

    def predict_proba(self, X):
        raise RuntimeError("predict_proba was called")


def test_only_the_outputs_asked_for_are_computed(tmp_path):
    model = NoProbabilitiesToday().fit(X, X[:, 0] > 0)
    backend, outputs = _served(tmp_path, model)
    assert [t.name for t in outputs] == ["label", "probabilities"]
    assert backend.execute({"input": X[:3].astype(np.float32)}, ["label"])["label"].shape == (3,)
    with pytest.raises(RuntimeError, match="predict_proba was called"):
        backend.execute({"input": X[:3].astype(np.float32)}, ["label", "probabilities"])
