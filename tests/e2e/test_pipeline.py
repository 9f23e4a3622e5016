"""Pipelines end to end: the bundled text pipeline (tokenize.py -> bag_classifier.pt ->
label.py) served by the real daemon, checked against its steps run in-process, through every
front-end; a failing middle step; pipelines that cannot be wired."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import make_models
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from daemon_process import DaemonProcess
from test_workers import metric
from waiting import eventually

from inferd.client import AsyncClient, Client, InferdClientError

TEXTS = ["The team won the match", "Rain and snow in the forecast", "Stocks fell as the market opened",
         "A new GPU chip for the cloud", "hello there", ""]
WANT = ["sports", "weather", "finance", "tech", "unknown", "unknown"]

# A middle step that refuses rows with no tokens (an empty text).
PICKY = '''
import numpy as np

class Model:
    inputs = [{"name": "tokens", "datatype": "INT64", "shape": [-1, 16]}]
    outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}]

    def infer(self, inputs):
        tokens = inputs["tokens"]
        if not (tokens != 0).any(axis=1).all():
            raise RuntimeError("a row has no tokens")
        return {"probabilities": np.full((len(tokens), 4), 0.25, np.float32)}
'''


def pipeline_config(*steps: str) -> str:
    return "".join(f'[[pipeline]]\nmodel = "{s}"\n' for s in steps)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipelines")
    make_models.make_text_examples(root)
    (root / "picky" / "1").mkdir(parents=True)
    (root / "picky" / "1" / "model.py").write_text(PICKY)
    (root / "fussy").mkdir()
    (root / "fussy" / "config.toml").write_text(pipeline_config("tokenize", "picky", "label"))
    (root / "dangling").mkdir()
    (root / "dangling" / "config.toml").write_text(pipeline_config("tokenize", "no_such_model"))
    (root / "miswired").mkdir()  # label wants FP32 probabilities; tokenize gives INT64 tokens
    (root / "miswired" / "config.toml").write_text(
        pipeline_config("tokenize", "label").replace(
            'model = "label"\n', 'model = "label"\ninputs = { probabilities = "tokenize.tokens" }\n'))
    return root


@pytest.fixture(scope="module")
def served(repo):
    with DaemonProcess(repo) as d:
        yield d


def in_process(texts: list[str]) -> tuple[list[bytes], np.ndarray]:
    """The same three steps, run here: tokenize's own code, the classifier module, label's rule."""
    tokenize = make_models._tokenizer()
    tokens = torch.tensor([tokenize.token_ids(t) for t in texts], dtype=torch.int64)
    with torch.inference_mode():
        probabilities = make_models.bag_classifier_module()(tokens).numpy()
    best, score = probabilities.argmax(1), probabilities.max(1)
    labels = [list(make_models.TOPICS)[b].encode() if s >= 0.4 else b"unknown" for b, s in zip(best, score)]
    return labels, score


def _texts(texts=TEXTS) -> np.ndarray:
    return np.array([t.encode() for t in texts], dtype=object)


def test_the_text_pipeline_matches_its_steps_run_in_process(served):
    labels, scores = in_process(TEXTS)
    assert [label.decode() for label in labels] == WANT  # the example classifies as built
    with Client(socket=served.socket_path) as c:
        out = c.infer("text_classifier", {"text": _texts()})
        assert out["label"].tolist() == labels
        np.testing.assert_allclose(out["score"], scores, rtol=1e-6)
        meta = c.model_metadata("text_classifier")
    assert meta["platform"] == "pipeline"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [t["name"] for t in meta["outputs"]] == ["label", "score"]


def test_the_pipeline_equals_calling_its_steps_one_by_one(served):
    with Client(socket=served.socket_path) as c:
        tokens = c.infer("tokenize", {"text": _texts()})["tokens"]
        probabilities = c.infer("bag_classifier", {"tokens": tokens})["probabilities"]
        by_hand = c.infer("label", {"probabilities": probabilities})
        piped = c.infer("text_classifier", {"text": _texts()}, outputs=["label"])
    assert list(piped) == ["label"] and piped["label"].tolist() == by_hand["label"].tolist()


def test_the_pipeline_over_http_and_grpc(served):
    [event] = [e for e in served.events("listening") if e["frontend"] == "grpc"]
    text = _texts()
    http = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput("text", [len(text)], "BYTES")
    tensor.set_data_from_numpy(text, binary_data=False)
    assert [s.decode() if isinstance(s, bytes) else s for s in http.infer("text_classifier", [tensor]).as_numpy("label")] == WANT
    http.close()
    grpc = grpcclient.InferenceServerClient(event["address"])
    tensor = grpcclient.InferInput("text", [len(text)], "BYTES")
    tensor.set_data_from_numpy(text)
    assert grpc.infer("text_classifier", [tensor]).as_numpy("label").tolist() == [w.encode() for w in WANT]
    grpc.close()


async def test_each_step_batches_with_its_own_queue(served):
    """32 concurrent one-row pipeline requests: every step runs them in fewer batches than
    requests, and every caller gets its own row's answer."""
    before = {m: metric(served, "inferd_batch_size_count", model=m) for m in ("tokenize", "bag_classifier", "label")}
    async with AsyncClient(socket=served.socket_path) as c:
        answers = await asyncio.gather(*(c.infer("text_classifier", {"text": _texts([TEXTS[i % 6]])}) for i in range(32)))
    assert [a["label"][0].decode() for a in answers] == [WANT[i % 6] for i in range(32)]
    for model, count in before.items():
        batches = metric(served, "inferd_batch_size_count", model=model) - count
        assert 1 <= batches < 32, model
    assert metric(served, "inferd_requests_total", model="tokenize", protocol="pipeline", code="OK") >= 32


def test_a_failing_middle_step_is_named(served):
    with Client(socket=served.socket_path) as c:
        with pytest.raises(InferdClientError) as e:
            c.infer("fussy", {"text": _texts(["fine", ""])})
        assert e.value.code == "internal"
        assert "pipeline 'fussy' step 2 ('picky')" in e.value.message and "a row has no tokens" in e.value.message
        assert c.infer("fussy", {"text": _texts(["fine"])})["label"].tolist() == [b"unknown"]  # serves on
    http = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(_texts([""]), binary_data=False)
    with pytest.raises(Exception) as e:
        http.infer("fussy", [tensor])
    assert e.value.status() == "500" and "step 2 ('picky')" in str(e.value)
    http.close()


def test_bad_requests_to_a_pipeline_are_the_callers(served):
    with Client(socket=served.socket_path) as c:
        for inputs, reason in (({"text": np.zeros(2, np.int32)}, "datatype INT32"),
                               ({"words": _texts()}, "unknown input 'words'"),
                               ({"text": _texts(["x"] * 65)}, "max_batch_size 64")):
            with pytest.raises(InferdClientError) as e:
                c.infer("text_classifier", inputs)
            assert e.value.code == "invalid_argument" and reason in e.value.message


def test_pipelines_that_cannot_be_wired_fail_with_the_reason(served):
    with Client(socket=served.socket_path) as c:
        index = {r["name"]: r for r in c.models()}
    assert index["dangling"]["state"] == "FAILED" and "'no_such_model'" in index["dangling"]["reason"]
    assert index["miswired"]["state"] == "FAILED"
    assert "input 'probabilities' is FP32, but tokenize.tokens is INT64" in index["miswired"]["reason"]


async def test_a_step_model_removed_makes_the_pipeline_unavailable_naming_it(tmp_path):
    make_models.make_text_examples(tmp_path)
    with DaemonProcess(tmp_path, env={"INFERD_MODELS_SETTLE_MS": "100"}) as d, Client(socket=d.socket_path) as c:
        assert c.infer("text_classifier", {"text": _texts()})["label"].tolist() == [w.encode() for w in WANT]
        shutil.rmtree(tmp_path / "label")
        await eventually(lambda: "label" not in {r["name"] for r in c.models()}, 30, "label to be unloaded")
        with pytest.raises(InferdClientError) as e:
            c.infer("text_classifier", {"text": _texts()})
        assert e.value.code == "unavailable" and "step model 'label'" in e.value.message
        assert not c.ready("text_classifier")  # not READY while a step is missing
        make_models.make_text_examples(tmp_path)  # back: the pipeline serves again
        await eventually(lambda: {"name": "label", "version": "1", "state": "READY"} in c.models(), 30, "label to be back")
        await eventually(lambda: c.ready("text_classifier"), 30, "the pipeline to be READY again")
        assert c.infer("text_classifier", {"text": _texts()})["label"].tolist() == [w.encode() for w in WANT]
