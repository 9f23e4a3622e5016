"""How a pipeline's steps are wired together (pure: step metadata is given, nothing runs but
the step calls a test supplies)."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.common.errors import ErrorCode, InferdError
from inferd.common.tensors import ModelMetadata, TensorSpec
from inferd.config.model import PipelineStep
from inferd.daemon.models.pipeline import REQUEST, Pipeline, PipelineError
from inferd.daemon.requests import InferRequest


def spec(name, datatype="FP32", shape=(-1, 4)):
    return TensorSpec(name, datatype, shape)


MODELS = {
    "tok": (ModelMetadata("python", (spec("text", "BYTES", (-1,)),),
                          (spec("tokens", "INT64", (-1, 16)), spec("mask", "BOOL", (-1, 16)))), 64),
    "enc": (ModelMetadata("onnx", (spec("tokens", "INT64", (-1, 16)), spec("mask", "BOOL", (-1, 16))), (spec("emb"),)), 32),
    "head": (ModelMetadata("python", (spec("emb"), spec("text", "BYTES", (-1,))), (spec("label", "BYTES", (-1,)),)), 0),
    "ids": (ModelMetadata("onnx", (spec("ids", "INT64", (-1, 16)),), (spec("emb"),)), 8),
}


def metadata_of(step):
    if step.model not in MODELS:
        raise PipelineError(f"step model {step.model!r}: unknown model")
    return MODELS[step.model]


def steps(*items):
    return tuple(PipelineStep(m, "", tuple(inputs.items())) for m, inputs in items)


def test_inputs_come_from_the_latest_step_with_that_output_else_from_the_request():
    p = Pipeline("p", steps(("tok", {}), ("enc", {}), ("head", {})), metadata_of)
    assert [t.name for t in p.metadata.inputs] == ["text"] and p.metadata.outputs == MODELS["head"][0].outputs
    tok, enc, head = p.steps
    assert enc.sources == {"tokens": (0, "tokens"), "mask": (0, "mask")}
    assert head.sources == {"emb": (1, "emb"), "text": (REQUEST, "text")}  # the request's text, reused
    assert tok.wanted(None) == ("mask", "tokens") and enc.wanted(None) == ("emb",) and head.wanted(None) == ("label",)
    assert p.max_batch_size == 0  # head does not batch, so neither does the pipeline


def test_explicit_mapping_and_batch_limit():
    p = Pipeline("p", steps(("tok", {}), ("ids", {"ids": "tok.tokens"})), metadata_of)
    assert p.steps[1].sources == {"ids": (0, "tokens")}
    assert p.steps[0].wanted(None) == ("tokens",)  # mask is used by no step: not asked for
    assert p.max_batch_size == 8
    p = Pipeline("p", steps(("ids", {"ids": "request_ids"}),), metadata_of)
    assert [t.name for t in p.metadata.inputs] == ["request_ids"]


@pytest.mark.parametrize("items,reason", [
    ((("tok", {}), ("enc", {"nope": "tok.tokens"})), "step 2 ('enc') has no input 'nope'"),
    ((("tok", {}), ("enc", {"tokens": "tok.ids"})), "that step has no such output"),
    ((("tok", {}), ("ids", {"ids": "tok.mask"})), "input 'ids' is INT64, but tok.mask is BOOL"),
    ((("p", {}),), "the pipeline itself"),
    ((("tok", {}), ("tok", {})), "step 1 ('tok'): no later step uses its outputs"),
    ((("ids", {}), ("tok", {})), "step 1 ('ids'): no later step uses its outputs"),
    ((("tok", {}), ("missing", {})), "step model 'missing': unknown model"),
    ((("enc", {"tokens": "x", "mask": "x"}),), "pipeline input 'x' feeds steps that disagree"),
])
def test_steps_that_do_not_fit_are_refused_naming_the_step(items, reason):
    with pytest.raises(PipelineError) as e:
        Pipeline("p", steps(*items), metadata_of)
    assert reason in str(e.value)


async def test_run_hands_outputs_on_and_names_the_failing_step():
    p = Pipeline("p", steps(("tok", {}), ("ids", {"ids": "tok.tokens"})), metadata_of)
    seen = []

    async def run_step(step, request):
        seen.append((step.model, sorted(request.inputs), request.outputs))
        if step.model == "tok":
            return {"tokens": np.ones((2, 16), np.int64)}
        return {"emb": request.inputs["ids"][:, :4].astype(np.float32)}

    out = await p.run(InferRequest({"text": np.array([b"a", b"b"], dtype=object)}, id="r1"), run_step)
    assert seen == [("tok", ["text"], ("tokens",)), ("ids", ["ids"], ("emb",))]
    np.testing.assert_array_equal(out["emb"], np.ones((2, 4)))

    async def failing(step, request):
        if step.model == "ids":
            raise InferdError(ErrorCode.NOT_FOUND, "unknown model 'ids'")
        return {"tokens": np.ones((1, 16), np.int64)}

    with pytest.raises(InferdError) as e:
        await p.run(InferRequest({"text": np.array([b"a"], dtype=object)}), failing)
    assert e.value.code is ErrorCode.UNAVAILABLE and e.value.message == "pipeline 'p' step 2 ('ids'): unknown model 'ids'"
    await p.drain()  # nothing in flight
