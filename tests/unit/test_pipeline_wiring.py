"""How a pipeline's steps are wired together (pure: step metadata is given, nothing runs but
the step calls a test supplies)."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.common.errors import ErrorCode, InferdError
from inferd.common.tensors import ModelMetadata, TensorSpec
from inferd.config.model import PipelineStep, PipelineTensor
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
    assert [(s.model, wanted) for s, wanted in p.plan(None)] == [("tok", ("mask", "tokens")), ("enc", ("emb",)), ("head", ("label",))]
    assert p.max_batch_size == 0  # head does not batch, so neither does the pipeline


def test_explicit_mapping_and_batch_limit():
    p = Pipeline("p", steps(("tok", {}), ("ids", {"ids": "tok.tokens"})), metadata_of)
    assert p.steps[1].sources == {"ids": (0, "tokens")}
    assert p.plan(None)[0][1] == ("tokens",)  # mask is used by no step: not asked for
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


def step(model, inputs=None, outputs=None):
    return PipelineStep(model, "", tuple((inputs or {}).items()), tuple((outputs or {}).items()))


def test_renamed_outputs_feed_later_steps_and_pipeline_outputs_come_from_any_step():
    p = Pipeline("p", (step("tok", outputs={"tokens": "t", "mask": "m"}), step("enc", {"tokens": "t", "mask": "m"}),
                       step("head")), metadata_of,
                 outputs=(PipelineTensor("emb"), PipelineTensor("m", "BOOL", (-1, 16)), PipelineTensor("label")))
    tok, enc, head = p.steps
    assert enc.sources == {"tokens": (0, "tokens"), "mask": (0, "mask")}
    assert [t.name for t in p.metadata.outputs] == ["emb", "m", "label"]
    assert p.metadata.outputs[1] == spec("m", "BOOL", (-1, 16))
    assert tok.gives == (("mask", "m"),) and enc.gives == (("emb", "emb"),) and head.gives == (("label", "label"),)
    assert [(s.index, wanted) for s, wanted in p.plan(("label",))] == [(0, ("mask", "tokens")), (1, ("emb",)), (2, ("label",))]
    assert [(s.index, wanted) for s, wanted in p.plan(("m",))] == [(0, ("mask",))]  # the steps after it are not run
    assert [(s.index, wanted) for s, wanted in p.plan(("emb", "m"))] == [(0, ("mask", "tokens")), (1, ("emb",))]


def test_steps_that_lead_to_no_asked_output_are_not_planned():
    p = Pipeline("p", (step("tok"), step("enc", outputs={"emb": "e2"}), step("ids", outputs={"emb": "e1"})), metadata_of,
                 outputs=(PipelineTensor("e1"), PipelineTensor("e2")))
    assert [(s.index, wanted) for s, wanted in p.plan(("e1",))] == [(2, ("emb",))]
    assert [s.index for s, _ in p.plan(("e2",))] == [0, 1] and [s.index for s, _ in p.plan(None)] == [0, 1, 2]


def test_an_unmapped_input_finds_a_renamed_output_by_its_new_name_only():
    p = Pipeline("p", (step("tok", outputs={"tokens": "ids"}), step("ids")), metadata_of)
    assert p.steps[1].sources == {"ids": (0, "tokens")}
    with pytest.raises(PipelineError) as e:  # enc's unmapped tokens: no step output goes by that name
        Pipeline("p", (step("tok", outputs={"tokens": "ids"}), step("enc"), step("head")), metadata_of,
                 inputs=(PipelineTensor("text"),))
    assert "a step takes 'tokens' from the request, but the pipeline's inputs do not list it" in str(e.value)


def test_the_last_steps_renamed_outputs_are_the_default_outputs():
    p = Pipeline("p", (step("ids", outputs={"emb": "vector"}),), metadata_of)
    assert p.metadata.outputs == (spec("vector"),) and p.steps[0].gives == (("emb", "vector"),)


def test_one_model_in_two_steps():
    p = Pipeline("p", (step("ids", {"ids": "a"}, {"emb": "ea"}), step("ids", {"ids": "b"}, {"emb": "eb"})), metadata_of,
                 outputs=(PipelineTensor("ea"), PipelineTensor("eb")))
    assert [s.sources for s in p.steps] == [{"ids": (REQUEST, "a")}, {"ids": (REQUEST, "b")}]
    assert [t.name for t in p.metadata.inputs] == ["a", "b"] and [t.name for t in p.metadata.outputs] == ["ea", "eb"]
    # "<model>.<output>" means the latest step that runs the model
    p = Pipeline("p", (step("tok", outputs={"mask": "m1"}), step("tok", {"text": "t2"}), step("ids", {"ids": "tok.tokens"})),
                 metadata_of, outputs=(PipelineTensor("m1"), PipelineTensor("emb")))
    assert p.steps[2].sources == {"ids": (1, "tokens")} and p.steps[0].gives == (("mask", "m1"),)


@pytest.mark.parametrize("items,inputs,outputs,reason", [
    ((step("tok", outputs={"nope": "x"}),), (), (), "step 1 ('tok') has no output 'nope'"),
    ((step("tok", outputs={"tokens": "mask"}),), (), (), "step 1 ('tok') gives an output the name 'mask', which another"),
    ((step("tok", outputs={"tokens": "x"}), step("enc", outputs={"emb": "x"})), (), (), "a name step 1 already gave"),
    ((step("ids", {"ids": "x"}), step("tok", outputs={"tokens": "x"})), (), (), "a name earlier steps take from the request"),
    ((step("tok"), step("enc")), (), (PipelineTensor("nothing"),), "pipeline output 'nothing' is no step's output"),
    ((step("tok"), step("enc")), (), (PipelineTensor("emb", "FP16"),), "'emb' is declared FP16, but its step's is FP32"),
    ((step("tok"), step("enc")), (), (PipelineTensor("emb", "", (-1, 5)),), "declared with shape [-1, 5], but its step's is [-1, 4]"),
    ((step("tok"), step("enc")), (), (PipelineTensor("emb", "", (4,)),), "declared with shape [4]"),
    ((step("ids"),), (PipelineTensor("ids"), PipelineTensor("extra")), (), "pipeline input 'extra' is used by no step"),
    ((step("ids"),), (PipelineTensor("ids", "INT32"),), (), "pipeline input 'ids' is declared INT32, but its step's is INT64"),
    ((step("tok"), step("ids")), (), (PipelineTensor("emb"),), "step 1 ('tok'): no later step uses its outputs, and the pipeline"),
])
def test_declared_tensors_and_renames_that_do_not_fit_are_refused(items, inputs, outputs, reason):
    with pytest.raises(PipelineError) as e:
        Pipeline("p", items, metadata_of, inputs, outputs)
    assert reason in str(e.value)


def test_declared_tensors_that_fit_give_the_metadata():
    p = Pipeline("p", (step("ids"),), metadata_of, (PipelineTensor("ids", "INT64", (-1, -1)),),
                 (PipelineTensor("emb", "FP32", (8, 4)),))
    assert p.metadata.inputs == (spec("ids", "INT64", (-1, 16)),) and p.metadata.outputs == (spec("emb"),)


async def test_run_returns_outputs_from_any_step_and_skips_steps_not_needed():
    p = Pipeline("p", (step("tok", outputs={"tokens": "ids"}), step("ids")), metadata_of,
                 outputs=(PipelineTensor("ids"), PipelineTensor("emb")))
    seen = []

    async def run_step(s, request):
        seen.append((s.index, request.outputs))
        if s.model == "tok":
            return {"tokens": np.ones((1, 16), np.int64)}
        return {"emb": np.zeros((1, 4), np.float32)}

    text = {"text": np.array([b"a"], dtype=object)}
    out = await p.run(InferRequest(dict(text)), run_step)
    assert list(out) == ["ids", "emb"] and out["ids"].dtype == np.int64 and seen == [(0, ("tokens",)), (1, ("emb",))]
    seen.clear()
    out = await p.run(InferRequest(dict(text), ("ids",)), run_step)
    assert list(out) == ["ids"] and seen == [(0, ("tokens",))]  # step 2 gives only what was not asked for
