"""Triton's reshape and optional inputs: config.toml's keys read and checked (config/reshape.py),
a load request's Triton JSON mapped onto them, and the worker's Reshaped wrapper around a small
real backend (shapes in, shapes out, metadata, per-request answers, decoupled responses)."""

import json
from pathlib import Path

import numpy as np
import pytest

from inferd.backends.base import BackendInputError, BackendOutputError
from inferd.backends.reshape import Reshaped, fill
from inferd.common.errors import ConfigError, InferdError
from inferd.common.tensors import ModelMetadata, TensorSpec
from inferd.config.model import ModelSettings, model_config_from
from inferd.config.reshape import model_shapes, triton_reshape
from inferd.config.triton_override import from_triton
from inferd.scheduler.worker_spec import WorkerSpec


def _config(inputs=(), outputs=(), **top):
    data = dict(top)
    if inputs:
        data["inputs"] = [{"name": n, "datatype": "FP32", "shape": s, **more} for n, s, more in inputs]
    if outputs:
        data["outputs"] = [{"name": n, "datatype": "FP32", "shape": s, **more} for n, s, more in outputs]
    return model_config_from(data, "m/config.toml", ModelSettings())


def test_reshape_leaves_the_batch_dimension_out_when_the_model_batches():
    config = _config([("x", [-1, 4], {"reshape": [2, 2], "optional": True}), ("y", [-1, 1], {"reshape": []})],
                     [("z", [-1, 2, 3], {"reshape": [6]})])
    assert config.reshape == {"x": (2, 2), "y": (), "z": (6,)}
    assert config.optional_inputs == frozenset({"x"})
    assert model_shapes(config.reshape, config.inputs + config.outputs, 64) == {"x": [-1, 2, 2], "y": [-1], "z": [-1, 6]}


def test_without_batching_the_whole_shape_is_reshaped():
    config = _config([("x", [1, 4], {"reshape": [1, 2, 2]}), ("v", [-1, 4], {"reshape": [-1, 2, 2]})], max_batch_size=0)
    assert model_shapes(config.reshape, config.inputs, 0) == {"x": [1, 2, 2], "v": [-1, 2, 2]}
    # A fixed first dimension is no batch dimension, whatever max_batch_size says.
    assert model_shapes(_config([("x", [1, 4], {"reshape": [4, 1]})]).reshape, (TensorSpec("x", "FP32", (1, 4)),), 64) == {
        "x": [4, 1]}


def test_a_dynamic_dimension_may_stay_where_it_maps():
    config = _config([("x", [-1, 2, 4, -1, 6], {"reshape": [8, -1, 1, 6]})])  # Triton's own example
    assert config.reshape == {"x": (8, -1, 1, 6)}
    assert _config([("x", [-1, 1], {"reshape": []})], max_batch_size=4).reshape == {"x": ()}
    assert _config([("x", [], {"reshape": [1, 1]})], max_batch_size=0).reshape == {"x": (1, 1)}


def test_no_reshape_no_optional_is_the_default():
    config = _config([("x", [-1, 4], {})], [("y", [-1, 4], {})])
    assert config.reshape == {} and config.optional_inputs == frozenset()


@pytest.mark.parametrize("inputs,outputs,key,reason", [
    ([("x", [-1, 4], {"reshape": [2, 3]})], [], "inputs[0].reshape", "holds 6 elements, shape [4]"),
    ([("x", [-1, 4], {"reshape": [2, 3]})], [], "inputs[0].reshape", "batch dimension, which reshape leaves out"),
    ([("x", [-1, 4], {"reshape": [-1, 4]})], [], "inputs[0].reshape", "does not map shape [4]"),
    ([("x", [-1, 2, -1], {"reshape": [-1, 2]})], [], "inputs[0].reshape", "each -1 must stand for one of the shape's"),
    ([("x", [-1, 2, -1, 3], {"reshape": [3, -1, 2]})], [], "inputs[0].reshape", "does not map"),
    ([("x", [-1, 4], {"reshape": [4, 0]})], [], "inputs[0].reshape", ">= 1 or -1"),
    ([("x", [-1, 4], {"reshape": [-2, -2]})], [], "inputs[0].reshape", ">= 1 or -1"),
    ([("x", [-1, 4], {"reshape": "2x2"})], [], "inputs[0].reshape", "expected an array"),
    ([("x", [-1, 4], {"reshape": [2.0, 2]})], [], "inputs[0].reshape", "expected an array"),
    ([("x", [-1, 4], {"reshape": [True, 4]})], [], "inputs[0].reshape", "expected an array"),
    ([("x", [-1, 4], {"reshape": {"shape": [2, 2]}})], [], "inputs[0].reshape", "expected an array"),
    ([("x", [-1, 4], {"reshape": [1] * 33 + [4]})], [], "inputs[0].reshape", "at most 32"),
    ([("x", [-1, 4], {"reshape": [1 << 70]})], [], "inputs[0].reshape", ">= 1 or -1"),
    ([("x", [-1, 4], {"optional": "yes"})], [], "inputs[0].optional", "true or false"),
    ([("x", [-1, 4], {"optional": 1})], [], "inputs[0].optional", "true or false"),
    ([("x", [-1, 4], {})], [("y", [-1, 4], {"optional": True})], "outputs[0]", "optionally label_filename, reshape"),
    ([("x", [-1, 4], {"reshaped": [2, 2]})], [], "inputs[0]", "optionally format, optional, reshape"),
    ([("t", [-1, 4], {})], [("t", [-1, 4], {"reshape": [2, 2]})], "outputs[0].reshape", "both an input and an output"),
    ([], [("y", [-1, 4], {"reshape": [5]})], "outputs[0].reshape", "holds 5 elements"),
])
def test_bad_reshape_or_optional_names_the_key_and_the_reason(inputs, outputs, key, reason):
    with pytest.raises(ConfigError) as e:
        _config(inputs, outputs)
    assert e.value.file == "m/config.toml" and e.value.key == key and reason in e.value.reason


def test_triton_view_of_a_reshape():
    assert triton_reshape({"x": (2, 2), "s": ()}, "x") == {"reshape": {"shape": [2, 2]}}
    assert triton_reshape({"x": (2, 2), "s": ()}, "s") == {"reshape": {"shape": []}}
    assert triton_reshape({"x": (2, 2)}, "y") == {}


def test_a_load_requests_triton_json_maps_reshape_and_optional():
    doc = {"name": "m", "max_batch_size": 8,
           "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"], "reshape": {"shape": ["2", "2"]},
                      "optional": True}],
           "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1], "reshape": {"shape": []}}]}
    out = from_triton("m", json.dumps(doc))
    assert out["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4], "reshape": [2, 2], "optional": True}]
    assert out["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 1], "reshape": []}]
    config = model_config_from(out, "the load request's config", ModelSettings())
    assert config.reshape == {"x": (2, 2), "y": ()} and config.optional_inputs == {"x"}
    doc["output"][0]["optional"] = True  # outputs are never optional
    with pytest.raises(InferdError, match="'optional' = true is not supported"):
        from_triton("m", json.dumps(doc))


def test_worker_settings_carry_the_models_shapes_and_optional_inputs_over_the_wire():
    spec = WorkerSpec.of("m", "1", Path("/m/1/model.onnx"), "x:Y", ModelSettings(), reshape={"x": [-1, 2, 2]},
                         optional_inputs=("x",))
    wire = json.loads(json.dumps(spec.settings.to_wire()))
    again = type(spec.settings).from_wire(wire)
    assert again == spec.settings and again.reshape == {"x": [-1, 2, 2]} and again.optional_inputs == ("x",)
    assert WorkerSpec.of("m", "1", Path("/m/1/model.onnx"), "x:Y", ModelSettings()).settings.reshape == {}


def test_fill_takes_each_minus_one_from_the_one_it_stands_for():
    assert fill((-1, 8, -1, 1, 6), (-1, 2, 4, -1, 6), (3, 2, 4, 5, 6)) == (3, 8, 5, 1, 6)
    assert fill((-1, 2, 2), (-1, 4), (7, 4)) == (7, 2, 2)
    assert fill((-1, 1), (-1,), (7,)) == (7, 1)


# -- the worker's wrapper ------------------------------------------------------------------

class Doubler:
    """A small real backend whose model sees x as [-1, 2, 2]: y = 2x (the same shape), s = the
    sum of each row ([-1]). Per-request when asked: each caller's rows, the second caller failed."""

    platform = "test"
    device_name = "cuda:3"

    def __init__(self, path, settings):
        self.settings = settings
        self.seen: list[tuple] = []
        self.closed = False

    def load(self) -> ModelMetadata:
        return ModelMetadata(self.platform, (TensorSpec("x", "FP32", (-1, 2, 2)),),
                             (TensorSpec("y", "FP32", (-1, 2, 2)), TensorSpec("s", "FP32", (-1,))))

    def execute(self, inputs, outputs, requests=None):
        x = inputs["x"]
        self.seen.append(x.shape)
        out = {"y": x * 2, "s": x.sum(axis=(1, 2))}
        if requests is None:
            return out
        first = requests.rows[0]
        return [{k: v[:first] for k, v in out.items()}, BackendInputError("not this one")]

    def responses(self, inputs, outputs, parameters=None):
        assert parameters == {"p": 1}  # what the worker passes goes through
        try:
            for i in range(3):
                yield {"y": inputs["x"] * i, "s": inputs["x"].sum(axis=(1, 2))}
        finally:
            self.closed = True


def _reshaped(reshape=None) -> Reshaped:
    spec = WorkerSpec.of("m", "1", Path("/m/1/model.py"), "x:Y", ModelSettings(),
                         inputs=(TensorSpec("x", "FP32", (-1, 4)),),
                         outputs=(TensorSpec("y", "FP32", (-1, 4)), TensorSpec("s", "FP32", (-1, 1))),
                         reshape=reshape or {"x": [-1, 2, 2], "y": [-1, 2, 2], "s": [-1]})
    return Reshaped(Doubler, spec.settings.model_dir, spec.settings)


def test_the_backend_inside_sees_the_models_shapes_and_the_daemon_the_clients():
    backend = _reshaped()
    assert [t.shape for t in backend.backend.settings.inputs] == [(-1, 2, 2)]
    assert [t.shape for t in backend.backend.settings.outputs] == [(-1, 2, 2), (-1,)]
    metadata = backend.load()
    assert [(t.name, t.shape) for t in metadata.inputs + metadata.outputs] == [("x", (-1, 4)), ("y", (-1, 4)), ("s", (-1, 1))]
    assert backend.device_name == "cuda:3" and backend.platform == "test"  # the rest is the backend's


def test_inputs_go_in_as_the_model_sees_them_and_outputs_come_back_as_clients_do():
    backend = _reshaped()
    backend.load()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = backend.execute({"x": x}, ["y", "s"])
    assert backend.backend.seen == [(3, 2, 2)]
    np.testing.assert_array_equal(out["y"], x * 2)
    np.testing.assert_array_equal(out["s"], x.sum(axis=1, keepdims=True))


def test_per_request_answers_are_reshaped_each_and_failures_pass_through():
    from inferd.backends.base import BatchRequests

    backend = _reshaped()
    backend.load()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    first, second = backend.execute({"x": x}, ["y", "s"], requests=BatchRequests((1, 2), ({}, {})))
    np.testing.assert_array_equal(first["y"], x[:1] * 2)
    assert first["s"].shape == (1, 1)
    assert isinstance(second, BackendInputError)


def test_decoupled_responses_are_reshaped_and_closing_closes_the_models():
    backend = _reshaped()
    backend.load()
    responses = backend.responses({"x": np.ones((1, 4), np.float32)}, ["y", "s"], parameters={"p": 1})
    assert next(responses)["y"].shape == (1, 4)
    np.testing.assert_array_equal(next(responses)["s"], [[4]])
    responses.close()
    assert backend.backend.closed


def test_a_reshape_the_model_contradicts_fails_the_load():
    backend = _reshaped({"x": [-1, 4, 1]})
    with pytest.raises(RuntimeError, match=r"reshapes input 'x' to \[-1, 4, 1\].*the model has \[-1, 2, 2\]"):
        backend.load()


def test_an_output_not_in_the_reshapes_shape_is_the_models_fault():
    backend = _reshaped({"x": [-1, 2, 2], "s": [-1, 1, 1]})
    with pytest.raises(BackendOutputError, match="output 's' has shape \\[2\\]"):
        backend.execute({"x": np.zeros((2, 4), np.float32)}, ["s"])


def test_an_input_in_neither_shape_is_refused_not_reshaped():
    with pytest.raises(BackendInputError, match="input 'x' has shape \\[1, 5\\]"):
        _reshaped().execute({"x": np.zeros((1, 5), np.float32)}, ["y"])
