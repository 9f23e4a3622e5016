"""Triton ensembles (config.pbtxt, parsed by read_pbtxt) converted to pipeline config data,
read by config.model, and wired by Pipeline against given step metadata (pure: nothing runs)."""

from __future__ import annotations

import pytest

from inferd.common.errors import ConfigError
from inferd.common.tensors import ModelMetadata, TensorSpec
from inferd.config.model import ModelSettings, PipelineTensor, model_config_from
from inferd.config.triton_config import read_pbtxt
from inferd.config.triton_ensemble import ensemble_to_pipeline
from inferd.daemon.models.pipeline import REQUEST, Pipeline, PipelineError

# Listed out of order: "summer" consumes what "scaler" produces; an output from each step.
ENSEMBLE = '''
name: "ens"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "SCALED" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "TOTAL" data_type: TYPE_FP32 dims: [ 1 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "summer"
      model_version: -1
      input_map { key: "x" value: "SCALED" }
      output_map { key: "y" value: "TOTAL" }
    },
    {
      model_name: "scaler"
      model_version: 2
      input_map { key: "x" value: "RAW" }
      output_map { key: "y" value: "SCALED" }
    }
  ]
}
'''

STEPS = {
    "scaler": (ModelMetadata("onnx", (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),)), 16),
    "summer": (ModelMetadata("onnx", (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 1)),)), 8),
}


def metadata_of(step):
    if step.model not in STEPS:
        raise PipelineError(f"step model {step.model!r}: unknown model")
    return STEPS[step.model]


def convert(tmp_path, text: str, name: str = "ens") -> dict:
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    return ensemble_to_pipeline(read_pbtxt(path), name, str(path))


def test_an_ensemble_becomes_a_pipeline_with_its_steps_in_dependency_order(tmp_path):
    data = convert(tmp_path, ENSEMBLE)
    assert data == {
        "max_batch_size": 8,
        "inputs": [{"name": "RAW", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "SCALED", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "TOTAL", "datatype": "FP32", "shape": [-1, 1]}],
        "pipeline": [{"model": "scaler", "version": "2", "inputs": {"x": "RAW"}, "outputs": {"y": "SCALED"}},
                     {"model": "summer", "version": "", "inputs": {"x": "SCALED"}, "outputs": {"y": "TOTAL"}}],
    }
    config = model_config_from(data, "config.pbtxt", ModelSettings())
    assert [(s.model, s.version) for s in config.pipeline] == [("scaler", "2"), ("summer", "")]
    assert config.settings.max_batch_size == 8
    assert config.pipeline_outputs[1] == PipelineTensor("TOTAL", "FP32", (-1, 1))
    pipeline = Pipeline.of("ens", config, metadata_of)
    scaler, summer = pipeline.steps
    assert scaler.sources == {"x": (REQUEST, "RAW")} and summer.sources == {"x": (0, "y")}
    assert scaler.gives == (("y", "SCALED"),) and summer.gives == (("y", "TOTAL"),) and scaler.feeds == ("y",)
    assert [t.name for t in pipeline.metadata.outputs] == ["SCALED", "TOTAL"] and pipeline.max_batch_size == 8
    assert Pipeline.of("ens", model_config_from(data | {"max_batch_size": 4}, "f", ModelSettings()),
                       metadata_of).max_batch_size == 4  # the ensemble's limit, below its steps'


def test_one_model_in_two_steps_and_a_fixed_shape_ensemble(tmp_path):
    data = convert(tmp_path, '''
        name: "twice" platform: "ensemble"
        input [ { name: "A" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
        output [ { name: "B" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
        ensemble_scheduling { step [
          { model_name: "scaler" model_version: -1 input_map { key: "x" value: "mid" } output_map { key: "y" value: "B" } },
          { model_name: "scaler" model_version: -1 input_map { key: "x" value: "A" } output_map { key: "y" value: "mid" } }
        ] }''', "twice")
    assert data["inputs"][0]["shape"] == [-1, 4]  # max_batch_size 0: dims are the whole shape
    pipeline = Pipeline.of("twice", model_config_from(data, "f", ModelSettings()), metadata_of)
    assert pipeline.max_batch_size == 0  # as Triton's ensemble: requests are not split into rows
    assert [s.sources for s in pipeline.steps] == [{"x": (REQUEST, "A")}, {"x": (0, "y")}]
    assert pipeline.outputs == {"B": (1, "y")}


def test_parameters_and_restated_defaults_are_accepted(tmp_path):
    data = convert(tmp_path, ENSEMBLE.replace('max_batch_size: 8', 'max_batch_size: 8 parameters { key: "k" value: { string_value: "v" } }')
                   .replace('dims: [ 4 ] }', 'dims: [ 4 ] optional: false format: FORMAT_NONE }', 1))
    assert data["parameters"] == {"k": "v"} and data["inputs"][0]["name"] == "RAW"


def _bad(old: str, new: str) -> str:
    assert old in ENSEMBLE
    return ENSEMBLE.replace(old, new, 1)


@pytest.mark.parametrize("text,key,reason", [
    (_bad('value: "RAW" }', 'value: "NOPE" }'), "ensemble_scheduling.step[1].input_map",
     "tensor 'NOPE' is neither an ensemble input nor any step's output"),
    (_bad('input_map { key: "x" value: "RAW" }', 'input_map { key: "x" value: "TOTAL" }'), "ensemble_scheduling",
     "a cycle through tensor"),
    (_bad('output_map { key: "y" value: "TOTAL" }', 'output_map { key: "y" value: "SCALED" }'),
     "ensemble_scheduling.step[1].output_map", "tensor 'SCALED' is produced twice: by step 1 and by step 2"),
    (_bad('output_map { key: "y" value: "TOTAL" }', 'output_map { key: "y" value: "RAW" }'),
     "ensemble_scheduling.step[0].output_map", "tensor 'RAW' is produced twice: by an ensemble input"),
    (_bad('{ name: "TOTAL"', '{ name: "LOST"'), "output[1]", "ensemble output 'LOST' is no step's output"),
    (_bad('input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] } ]',
          'input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "SPARE" data_type: TYPE_FP32 dims: [ 1 ] } ]'),
     "input[1]", "ensemble input 'SPARE' is used by no step"),
    (_bad('model_version: 2', 'model_version: -2'), "ensemble_scheduling.step[1].model_version", "got -2"),
    (_bad('model_version: 2', 'model_version: 2 model_namespace: "other"'), "ensemble_scheduling.step[1].model_namespace",
     "one namespace"),
    (_bad('max_batch_size: 8', 'max_batch_size: 8 response_cache { enable: true }'), "response_cache", "has no response_cache"),
    (_bad('max_batch_size: 8', 'max_batch_size: 8 instance_group [ { count: 2 } ]'), "instance_group", "no instance_group"),
    (_bad('dims: [ 4 ] }', 'dims: [ 4 ] reshape { shape: [ 2, 2 ] } }'), "input[0].reshape", "step models' own"),
    (_bad('dims: [ 4 ] }', 'dims: [ 4 ] optional: true }'), "input[0].optional", "step models' own"),
    (_bad('dims: [ 1 ] }', 'dims: [ 1 ] label_filename: "labels.txt" }'), "output[1].label_filename", "step models' own"),
    (_bad('data_type: TYPE_FP32 dims: [ 4 ] } ]', 'data_type: TYPE_BF16 dims: [ 4 ] } ]'), "input[0].data_type",
     "TYPE_BF16 is not a datatype inferd serves"),
    (_bad('name: "ens"', 'name: "other"'), "name", "not the model directory's 'ens'"),
    (_bad('{ name: "RAW"', '{ name: "scaler.y"').replace('value: "RAW"', 'value: "scaler.y"'), "input[0].name",
     "would read as step model 'scaler'"),
    ('name: "ens" platform: "ensemble" output [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]', "ensemble_scheduling",
     "at least one step"),
])
def test_ensembles_a_pipeline_cannot_run_are_refused_naming_the_key(tmp_path, text, key, reason):
    with pytest.raises(ConfigError) as e:
        convert(tmp_path, text)
    assert e.value.key == key and reason in str(e.value)


@pytest.mark.parametrize("models,reason", [
    ({"scaler": STEPS["scaler"]}, "step model 'summer': unknown model"),
    ({"scaler": STEPS["scaler"], "summer": (ModelMetadata("onnx", (TensorSpec("z", "FP32", (-1, 4)),),
                                                          (TensorSpec("y", "FP32", (-1, 1)),)), 8)},
     "step 2 ('summer') has no input 'x'"),
    ({"scaler": STEPS["scaler"], "summer": (ModelMetadata("onnx", (TensorSpec("x", "FP32", (-1, 4)),),
                                                          (TensorSpec("total", "FP32", (-1, 1)),)), 8)},
     "step 2 ('summer') has no output 'y'"),
    ({"scaler": STEPS["scaler"], "summer": (ModelMetadata("onnx", (TensorSpec("x", "FP32", (-1, 4)),),
                                                          (TensorSpec("y", "FP64", (-1, 1)),)), 8)},
     "pipeline output 'TOTAL' is declared FP32, but its step's is FP64"),
    ({"scaler": STEPS["scaler"], "summer": (ModelMetadata("onnx", (TensorSpec("x", "INT32", (-1, 4)),),
                                                          (TensorSpec("y", "FP32", (-1, 1)),)), 8)},
     "step 2 ('summer') input 'x' is INT32, but scaler.y is FP32"),
])
def test_step_models_that_do_not_fit_fail_the_pipelines_load_with_the_reason(tmp_path, models, reason):
    config = model_config_from(convert(tmp_path, ENSEMBLE), "f", ModelSettings())

    def given(step):
        if step.model not in models:
            raise PipelineError(f"step model {step.model!r}: unknown model")
        return models[step.model]

    with pytest.raises(PipelineError) as e:
        Pipeline.of("ens", config, given)
    assert reason in str(e.value)
