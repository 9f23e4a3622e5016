"""Triton Python models in inferd's Python backend, driven in-process as the worker drives it:
Triton's examples with their config.pbtxt (read_pbtxt, as the daemon hands it over), the
per-request contract (one InferenceRequest per caller, failures per caller), async execute,
and what a broken model gets. Decoupled models: test_triton_python_decoupled.py."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from triton_python_backends import backend, write_model
from triton_python_layout import lay_out

from inferd.backends.base import BackendInputError, BackendOutputError, BatchRequests
from inferd.backends.python import ModelCodeError

ADD_SUB_SIGNATURE = {"INPUT0": np.array([1, 2, 3, 4], np.float32), "INPUT1": np.array([0.5, 1, 1.5, 2], np.float32)}


def test_add_sub_with_its_config_pbtxt(tmp_path):
    root = lay_out(["add_sub"], tmp_path / "models")
    b = backend(root, "add_sub")
    metadata = b.load()
    assert (metadata.max_batch_size, [t.shape for t in metadata.inputs]) == (0, [(4,), (4,)])
    out = b.execute(dict(ADD_SUB_SIGNATURE), ["OUTPUT0", "OUTPUT1"])
    np.testing.assert_array_equal(out["OUTPUT0"], np.array([1.5, 3, 4.5, 6], np.float32))
    np.testing.assert_array_equal(out["OUTPUT1"], np.array([0.5, 1, 1.5, 2], np.float32))
    b.unload()


def test_initialize_gets_tritons_args(tmp_path):
    """Every value a string; model_config as JSON with its numbers as numbers (config.pbtxt's
    int64 dims come from protobuf's JSON as strings)."""
    root = lay_out(["add_sub"], tmp_path / "models")
    b = backend(root, "add_sub")
    b.load()
    args = b.triton._args()
    assert all(isinstance(v, str) for v in args.values())
    assert (args["model_name"], args["model_version"], args["model_instance_kind"]) == ("add_sub", "1", "CPU")
    assert args["model_repository"] == str(root / "add_sub")
    config = json.loads(args["model_config"])
    assert config["input"][0]["dims"] == [4] and config["max_batch_size"] == 0
    assert b.triton.model.output0_dtype is np.float32


def test_per_request_batch_answers_each_caller(tmp_path):
    """A batch of two callers (1 and 2 rows) is two InferenceRequests; each gets its rows back."""
    root = lay_out(["auto_complete"], tmp_path / "models")
    b = backend(root, "batch_auto_complete")
    assert b.load().max_batch_size == 4 and b.per_request
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    first, second = b.execute({"INPUT0": x, "INPUT1": x}, ["OUTPUT0"], requests=BatchRequests((1, 2), ({}, {})))
    np.testing.assert_array_equal(first["OUTPUT0"], 2 * x[:1])
    np.testing.assert_array_equal(second["OUTPUT0"], 2 * x[1:])
    assert set(first) == {"OUTPUT0"}


FAIL_BY_PARAMETER = """
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_max_batch_size(8)
        return config

    def execute(self, requests):
        out = []
        for request in requests:
            how = json.loads(request.parameters()).get("fail")
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if how == "invalid":
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("bad X", pb_utils.TritonError.INVALID_ARG)))
            elif how == "error":
                out.append(pb_utils.InferenceResponse([], pb_utils.TritonError("the model cannot")))
            elif how == "missing":
                out.append(pb_utils.InferenceResponse([]))
            elif how == "dtype":
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x.astype(np.float64))]))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        return out
"""


def test_an_error_response_fails_its_caller_alone(tmp_path):
    b = backend(write_model(tmp_path / "models", "m", FAIL_BY_PARAMETER), "m")
    b.load()
    x = np.arange(5, dtype=np.int32).reshape(5, 1)
    kinds = ({}, {"fail": "invalid"}, {"fail": "error"}, {"fail": "missing"}, {"fail": "dtype"})
    ok, invalid, error, missing, dtype = b.execute({"X": x}, ["Y"], requests=BatchRequests((1,) * 5, kinds))
    np.testing.assert_array_equal(ok["Y"], [[1]])
    assert isinstance(invalid, BackendInputError) and str(invalid) == "bad X"
    assert isinstance(error, ModelCodeError) and not isinstance(error, BackendInputError) and str(error) == "the model cannot"
    assert isinstance(missing, BackendOutputError) and "no output 'Y'" in str(missing)
    assert isinstance(dtype, BackendOutputError) and "float64" in str(dtype) and "TYPE_INT32" in str(dtype)


def test_without_callers_the_batch_is_one_request(tmp_path):
    """Warm-up, profiling, and batches from a scheduler that does not split them: one request,
    answered with a dict; an error response raises."""
    b = backend(write_model(tmp_path / "models", "m", FAIL_BY_PARAMETER), "m")
    b.load()
    out = b.execute({"X": np.array([[1], [2]], np.int32)}, ["Y"])
    np.testing.assert_array_equal(out["Y"], [[2], [3]])


BROKEN = """
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_max_batch_size(8)
        return config

    def execute(self, requests):
        x = pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
        if x[0, 0] == 1:
            raise pb_utils.TritonModelException("execute failed on purpose")
        if x[0, 0] == 2:
            return []
        if x[0, 0] == 3:
            return None
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", r.inputs()[0].as_numpy())]) for r in requests]
"""


@pytest.mark.parametrize(("value", "error", "words"), [
    (1, ModelCodeError, "execute() raised TritonModelException: execute failed on purpose"),
    (2, BackendOutputError, "got 0 responses for"),
    (3, BackendOutputError, "got NoneType for"),
])
def test_a_failing_execute_fails_every_caller_of_its_batch(tmp_path, value, error, words):
    b = backend(write_model(tmp_path / "models", "m", BROKEN), "m")
    b.load()
    answers = b.execute({"X": np.array([[value], [0]], np.int32)}, ["Y"], requests=BatchRequests((1, 1), ({}, {})))
    assert len(answers) == 2
    for answer in answers:
        assert isinstance(answer, error) and words in str(answer)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        b.execute({"X": np.array([[value], [0]], np.int32)}, ["Y"])


def test_initialize_that_raises_fails_the_load_with_its_message(tmp_path):
    body = BROKEN.replace("    def execute", "    def initialize(self, args):\n        raise ValueError('no weights')\n\n"
                          "    def execute")
    b = backend(write_model(tmp_path / "models", "m", body), "m")
    with pytest.raises(ModelCodeError, match=r"initialize\(\) raised ValueError: no weights"):
        b.load()


def test_auto_complete_may_not_contradict_config_pbtxt(tmp_path):
    pbtxt = 'input [{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }]\noutput [{ name: "Y" data_type: TYPE_INT32 dims: [ 1 ] }]\n'
    b = backend(write_model(tmp_path / "models", "m", BROKEN, pbtxt), "m")
    with pytest.raises(ModelCodeError, match="configuration expects datatype TYPE_FP32 for input 'X', model provides TYPE_INT32"):
        b.load()


ASYNC = """
import asyncio

class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "TEXT", "data_type": "TYPE_STRING", "dims": [-1]})
        config.add_output({"name": "UPPER", "data_type": "TYPE_STRING", "dims": [-1]})
        return config

    async def execute(self, requests):
        await asyncio.sleep(0)
        out = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            upper = np.array([t.decode().upper() for t in text], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("UPPER", upper)]))
        return out
"""


def test_async_execute_and_bytes_tensors(tmp_path):
    b = backend(write_model(tmp_path / "models", "m", ASYNC), "m")
    metadata = b.load()
    assert [(t.datatype, t.shape) for t in metadata.inputs] == [("BYTES", (-1,))]
    text = np.array([b"ab", b"c"], dtype=object)
    assert b.execute({"TEXT": text}, ["UPPER"])["UPPER"].tolist() == [b"AB", b"C"]
    b.unload()  # (closes the event loop execute ran on)


def test_config_toml_tensors_stand_in_for_a_missing_config_pbtxt(tmp_path):
    """A Triton model without config.pbtxt nor auto_complete_config: config.toml's tensors
    reach initialize as Triton's input/output."""
    root = lay_out(["add_sub"], tmp_path / "models")
    (root / "add_sub" / "config.pbtxt").unlink()
    from inferd.common.tensors import TensorSpec

    specs = tuple(TensorSpec(n, "FP32", (4,)) for n in ("INPUT0", "INPUT1"))
    outs = tuple(TensorSpec(n, "FP32", (4,)) for n in ("OUTPUT0", "OUTPUT1"))
    b = backend(root, "add_sub", inputs=specs, outputs=outs)
    b.load()
    np.testing.assert_array_equal(b.execute(dict(ADD_SUB_SIGNATURE), ["OUTPUT0"])["OUTPUT0"], [1.5, 3, 4.5, 6])


def test_inferds_own_python_models_are_unchanged(tmp_path):
    """A model.py with `Model` is served as before (it may even import pb_utils)."""
    version = tmp_path / "models" / "own" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent("""
        class Model:
            inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
            outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}]

            def infer(self, inputs):
                return {"y": inputs["x"] * 2}
    """))
    b = backend(tmp_path / "models", "own")
    b.load()
    assert b.triton is None and not b.per_request
    np.testing.assert_array_equal(b.execute({"x": np.array([1, 2], np.float32)}, ["y"])["y"], [2, 4])


def test_an_output_converts_within_its_kind_as_triton_examples_need(tmp_path):
    """bls_decoupled's SUM is np.array([0]) (int64) for a TYPE_INT32 output: answered as INT32;
    float64 for it stays an error (test_an_error_response_fails_its_caller_alone)."""
    body = FAIL_BY_PARAMETER.replace('pb_utils.Tensor("Y", x + 1)', 'pb_utils.Tensor("Y", (x + 1).astype(np.int64))')
    b = backend(write_model(tmp_path / "models", "m", body), "m")
    b.load()
    out = b.execute({"X": np.array([[1]], np.int32)}, ["Y"])["Y"]
    assert out.dtype == np.int32 and out.tolist() == [[2]]


def test_a_bls_request_takes_its_model_name_from_a_bytes_input():
    """Triton's bls example names the model with a BYTES input's element (bytes)."""
    from inferd.backends.triton import pb_utils

    request = pb_utils.InferenceRequest(model_name=np.array([b"add_sub"], dtype=object)[0], inputs=[],
                                        requested_output_names=["OUTPUT0"])
    assert request.model_name == "add_sub"
    assert request._call()["model"] == "add_sub" and request._call()["version"] == ""


SENDS_IN_DEFAULT_MODE = """
import threading

class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_max_batch_size(8)
        return config

    def execute(self, requests):
        for request in requests:
            x = request.inputs()[0].as_numpy()
            sender = request.get_response_sender()
            response = pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 10)])
            final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            if x[0, 0] == 2:  # twice: refused, the model is not decoupled
                sender.send(response)
            threading.Thread(target=sender.send, args=(response, final)).start()
        return None
"""


def test_a_model_that_is_not_decoupled_may_answer_through_its_response_sender(tmp_path):
    """Triton's default mode with the response sender: execute returns None, each request gets
    one response (here from a thread) with the final flag; two responses fail that caller."""
    b = backend(write_model(tmp_path / "models", "m", SENDS_IN_DEFAULT_MODE), "m")
    b.load()
    ok, twice, other = b.execute({"X": np.array([[1], [2], [3]], np.int32)}, ["Y"],
                                 requests=BatchRequests((1, 1, 1), ({}, {}, {})))
    assert ok["Y"].tolist() == [[10]] and other["Y"].tolist() == [[30]]
    assert isinstance(twice, BackendOutputError) and "sent 2 responses to a request" in str(twice)


def test_a_model_others_may_change_is_refused_before_it_runs(tmp_path):
    """The same rule as inferd's Python models: code writable by other users never runs."""
    root = lay_out(["add_sub"], tmp_path / "models")
    b = backend(root, "add_sub")
    (root / "add_sub" / "1").chmod(0o777)
    with pytest.raises(RuntimeError, match="writable by other users"):
        b.load()
    assert b.triton is None


ECHO_REQUEST = """
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [1]})
        config.add_output({"name": "SEEN", "data_type": "TYPE_STRING", "dims": [1]})
        config.set_max_batch_size(8)
        return config

    def execute(self, requests):
        out = []
        for r in requests:
            seen = json.dumps([r.correlation_id(), r.flags(), json.loads(r.parameters()), r.request_id()])
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SEEN", np.array([[seen]], dtype=np.object_))]))
        return out
"""


def test_a_callers_sequence_parameters_are_its_correlation_id_and_flags(tmp_path):
    b = backend(write_model(tmp_path / "models", "m", ECHO_REQUEST), "m")
    b.load()
    parameters = ({"sequence_id": 7, "sequence_start": True, "note": b"hi"}, {"sequence_id": "abc", "sequence_end": True}, {})
    answers = b.execute({"X": np.zeros((3, 1), np.int32)}, ["SEEN"],
                        requests=BatchRequests((1, 1, 1), parameters, ("a", "", "c")))
    seen = [json.loads(a["SEEN"][0, 0]) for a in answers]
    assert seen == [[7, 1, {"note": "hi"}, "a"], ["abc", 2, {}, ""], [0, 0, {}, "c"]]
