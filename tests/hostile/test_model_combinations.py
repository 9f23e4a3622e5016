"""Careless model authors: combinations inferd cannot serve are refused at load with the reason
(the model's state FAILED, its reason in the repository index), never accepted and silently
ignored, and the daemon serves the other models on. `decoupled` in config.toml on a model
that cannot stream, or of the wrong type, or contradicting the class; a decoupled model with
[sequence_batching]; a pipeline whose step is a stateful or a decoupled model."""

from __future__ import annotations

import make_models
import numpy as np
import pytest
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from sequence_models import write_python
from stream_models import REPEAT, place

SEQUENCES = """
[sequence_batching]
[[sequence_batching.control_input]]
name = "START"
kind = "CONTROL_SEQUENCE_START"
int32_false_true = [0, 1]
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_models.build_add_sub(root / "onnx_decoupled" / "1" / "model.onnx")
    (root / "onnx_decoupled" / "config.toml").write_text("decoupled = true\n")
    place(root, "decoupled_typo", REPEAT, 'decoupled = "yes"\n')
    place(root, "decoupled_denied", REPEAT, "decoupled = false\n")
    with_start = REPEAT.replace('"shape": [1]}]', '"shape": [1]}, {"name": "START", "datatype": "INT32", "shape": [1]}]', 1)
    assert with_start != REPEAT
    place(root, "decoupled_sequences", with_start, "max_batch_size = 0\n" + SEQUENCES)
    place(root, "repeat", REPEAT)
    write_python(root, "stateful", "accumulate", corrid="TYPE_UINT64")
    make_models.build_add_sub(root / "plain" / "1" / "model.onnx")
    for name, step in (("through_stateful", "stateful"), ("through_repeat", "repeat")):
        (root / name).mkdir()
        (root / name / "config.toml").write_text(f'[[pipeline]]\nmodel = "{step}"\n[[pipeline]]\nmodel = "plain"\n')
    with DaemonProcess(root) as d:
        client = httpclient.InferenceServerClient(d.url.removeprefix("http://"))
        yield {row["name"]: row for row in client.get_model_repository_index()}, client
        client.close()


@pytest.mark.parametrize("model, reason", [
    ("onnx_decoupled", "only a Python model whose infer yields its responses can be decoupled"),
    ("decoupled_typo", "decoupled: expected true or false, got 'yes'"),
    ("decoupled_denied", "config.toml says decoupled = false, but the model's class sets decoupled = True"),
    ("decoupled_sequences", "a decoupled model cannot have [sequence_batching]"),
    ("through_stateful", "step model 'stateful' batches sequences ([sequence_batching]): a pipeline's steps carry no "
                         "sequence id"),
    ("through_repeat", "step model 'repeat' is decoupled (0..N responses per request): a step must answer each request once"),
])
def test_what_cannot_be_served_fails_its_load_with_the_reason(index, model, reason):
    rows, client = index
    assert rows[model]["state"] == "FAILED" and reason in rows[model]["reason"], rows[model]
    assert not client.is_model_ready(model)


def test_the_daemon_serves_the_other_models_on(index):
    rows, client = index
    assert rows["repeat"]["state"] == rows["stateful"]["state"] == rows["plain"]["state"] == "READY"
    inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.ones((1, 16), np.int32))
    assert client.infer("plain", inputs).as_numpy("OUTPUT0").tolist() == [[2] * 16]
