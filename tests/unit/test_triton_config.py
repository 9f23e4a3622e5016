"""A config.pbtxt as config.toml keys (config/triton_config.py to_toml): each field of Triton's
model_config.proto mapped, noted (what inferd does instead) or refused with the reason."""

from pathlib import Path

import pytest

from inferd.common.errors import ConfigError
from inferd.config.model import ModelSettings, TritonModel, load_model_config
from inferd.config.triton_config import read_pbtxt, to_toml

REPOSITORY = Path(__file__).resolve().parents[1] / "triton_repository"


def _toml(tmp_path: Path, text: str, name: str = "m") -> dict:
    path = tmp_path / name / "config.pbtxt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return to_toml(read_pbtxt(path), name, str(path))


def _refused(tmp_path: Path, text: str, *words: str, name: str = "m") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _toml(tmp_path, text, name)
    for word in words:
        assert word in str(caught.value), str(caught.value)
    return caught.value


def test_the_quickstart_simple_model_maps_onto_batched_tensors():
    path = REPOSITORY / "simple" / "config.pbtxt"
    data = to_toml(read_pbtxt(path), "simple", str(path))
    triton = data.pop("triton")
    assert isinstance(triton, TritonModel) and triton.platform == "onnxruntime_onnx" and triton.notes == ()
    assert triton.config["name"] == "simple" and triton.config["input"][0]["dims"] == ["16"]
    assert data == {"max_batch_size": 8,
                    "inputs": [{"name": f"INPUT{i}", "datatype": "INT32", "shape": [-1, 16]} for i in (0, 1)],
                    "outputs": [{"name": f"OUTPUT{i}", "datatype": "INT32", "shape": [-1, 16]} for i in (0, 1)]}


def test_the_quickstart_sequence_model_maps_onto_sequence_batching_and_notes_the_queue_delay():
    path = REPOSITORY / "simple_dyna_sequence" / "config.pbtxt"
    data = to_toml(read_pbtxt(path), "simple_dyna_sequence", str(path))
    assert data["sequence_batching"]["strategy"] == "oldest"
    assert data["sequence_batching"]["max_candidate_sequences"] == 1024
    assert data["sequence_batching"]["max_sequence_idle_us"] == 10_000_000
    assert [c["kind"] for c in data["sequence_batching"]["control_input"]] == [
        "CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_CORRID"]
    assert data["max_workers"] == 2 and data["device"] == "cpu" and data["parameters"] == {"execute_delay_ms": "3"}
    [note] = data["triton"].notes
    assert "max_queue_delay_microseconds" in note and "as soon as its worker is free" in note
    config = load_model_config(path, ModelSettings())
    assert config.sequence_batching.corrid.datatype == "UINT64" and config.triton.platform == "onnxruntime_onnx"


def test_every_quickstart_config_without_reshape_loads():
    for directory in sorted(p for p in REPOSITORY.iterdir() if p.is_dir()):
        if directory.name in ("densenet_onnx", "inception_onnx"):
            continue  # reshape: config/model.py parses it (issue 24, helper HR)
        config = load_model_config(directory / "config.pbtxt", ModelSettings())
        assert config.triton.platform in ("onnxruntime_onnx", "python"), directory.name
        assert "max_batch_size" in config.explicit


def test_reshape_format_labels_and_optional_go_into_the_tensor_tables(tmp_path):
    data = _toml(tmp_path, """
        name: "m" backend: "onnxruntime" max_batch_size: 4
        input [{ name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, 8, 8] reshape { shape: [192] } },
               { name: "y" data_type: TYPE_INT64 dims: [1] optional: true }]
        output [{ name: "p" data_type: TYPE_FP32 dims: [10] reshape { shape: [] } label_filename: "l.txt" }]""")
    assert data["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3, 8, 8], "format": "FORMAT_NCHW", "reshape": [192]},
        {"name": "y", "datatype": "INT64", "shape": [-1, 1], "optional": True}]
    assert data["outputs"] == [{"name": "p", "datatype": "FP32", "shape": [-1, 10], "label_filename": "l.txt", "reshape": []}]


def test_max_batch_size_zero_is_said_so_and_dims_are_the_whole_shape(tmp_path):
    data = _toml(tmp_path, 'platform: "pytorch_libtorch" input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [-1, 4] }]')
    assert data["max_batch_size"] == 0 and data["inputs"][0]["shape"] == [-1, 4]
    assert data["triton"].platform == "pytorch_libtorch"


@pytest.mark.parametrize("text, platform", [
    ('platform: "onnxruntime_onnx"', "onnxruntime_onnx"), ('backend: "onnxruntime"', "onnxruntime_onnx"),
    ('platform: "pytorch_libtorch"', "pytorch_libtorch"), ('backend: "pytorch"', "pytorch_libtorch"),
    ('backend: "python"', "python"), ('', ""),
    ('platform: "onnxruntime_onnx" backend: "onnxruntime"', "onnxruntime_onnx"),
])
def test_platform_and_backend_name_what_runs_the_model(tmp_path, text, platform):
    assert _toml(tmp_path, text)["triton"].platform == platform


@pytest.mark.parametrize("text", ['platform: "tensorrt_plan"', 'platform: "tensorflow_graphdef"',
                                  'platform: "tensorflow_savedmodel"', 'backend: "openvino"', 'backend: "tensorrtllm"',
                                  'backend: "my_custom_backend"'])
def test_platforms_inferd_does_not_run_are_refused_saying_so(tmp_path, text):
    _refused(tmp_path, text, "is not supported by inferd", "onnxruntime_onnx")


def test_a_platform_and_a_backend_that_disagree_are_refused(tmp_path):
    _refused(tmp_path, 'platform: "onnxruntime_onnx" backend: "python"', "disagree")


def test_the_name_must_be_the_directorys(tmp_path):
    _refused(tmp_path, 'name: "other" backend: "python"', "name", "other", "directory")


@pytest.mark.parametrize("text, words", [
    ('max_batch_size: -1', ("max_batch_size", "wrong shape")),
    ('max_batch_size: 2 input [{ name: "x" data_type: TYPE_FP32 dims: [99999999999999] }]', ("dims", "-1 (dynamic) or 0 to")),
    ('max_batch_size: 2 input [{ name: "x" data_type: TYPE_FP32 dims: [-7] }]', ("dims", "-7")),
    ('input [{ name: "x" dims: [1] }]', ("unknown data_type", "TYPE_INVALID")),
    ('input [{ data_type: TYPE_FP32 dims: [1] }]', ("a tensor needs a name",)),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [1] is_shape_tensor: true }]', ("is_shape_tensor", "not supported")),
    ('input [{ name: "x" data_type: TYPE_FP32 dims: [1] allow_ragged_batch: true }]', ("allow_ragged_batch",)),
    ('instance_group [{ count: -2 kind: KIND_CPU }]', ("instance_group[0].count", "1 to 256")),
    ('instance_group [{ count: 100000 kind: KIND_CPU }]', ("instance_group[0].count",)),
    ('instance_group [{ kind: KIND_CPU }, { kind: KIND_GPU }]', ("one device",)),
    ('instance_group [{ count: 200 kind: KIND_CPU }, { count: 100 kind: KIND_CPU }]', ("300 instances", "at most 256")),
    ('default_model_filename: "a\\000b.onnx"', ("default_model_filename", "plain file name")),
    ('default_model_filename: ".hidden.onnx"', ("default_model_filename",)),
    ('instance_group [{ kind: KIND_GPU gpus: [0, 1] }]', ("at most one gpu",)),
    ('instance_group [{ kind: KIND_MODEL }]', ("KIND_MODEL",)),
    ('version_policy { latest { } }', ("num_versions must be at least 1",)),
    ('version_policy { specific { } }', ("at least one version",)),
    ('sequence_batching { state [{ input_name: "s" output_name: "t" }] }', ("implicit state",)),
    ('sequence_batching { control_input [{ name: "S" }] }', ("exactly one control",)),
    ('sequence_batching { max_sequence_idle_microseconds: 99999999999999 }', ("wrong shape",)),
    ('batch_input [{ kind: BATCH_ELEMENT_COUNT target_name: "n" }]', ("ragged batching",)),
    ('model_operations { op_library_filename: "libop.so" }', ("custom operation",)),
    ('model_repository_agents { agents [{ name: "checksum" }] }', ("repository agents",)),
    ('ensemble_scheduling { step [{ model_name: "a" }] }', ('platform "ensemble"',)),
    ('runtime: "libtorch.so"', ("runtime",)),
    ('backend: "python" parameters { key: "EXECUTION_ENV_PATH" value { string_value: "/env.tar.gz" } }', ("conda",)),
    ('model_transaction_policy { decoupled: true } dynamic_batching { default_queue_policy { max_queue_size: 0 } }'
     ' default_model_filename: "../x.onnx"', ("default_model_filename",)),
])
def test_hostile_and_unsupported_fields_are_refused_with_the_key_and_reason(tmp_path, text, words):
    _refused(tmp_path, text, *words)


def test_an_unparseable_file_is_a_config_error(tmp_path):
    _refused(tmp_path, 'name: "m" no_such_field: 3', "not a Triton model configuration")
    _refused(tmp_path, 'input [{ name: "x" data_type: TYPE_NOPE }]', "not a Triton model configuration")


def test_dynamic_batching_maps_the_delay_and_queue_size_and_notes_the_rest(tmp_path):
    data = _toml(tmp_path, """max_batch_size: 8 dynamic_batching {
        max_queue_delay_microseconds: 2500 preferred_batch_size: [4, 8] preserve_ordering: true
        priority_levels: 2 default_priority_level: 1
        default_queue_policy { max_queue_size: 100 default_timeout_microseconds: 5000 } }""")
    assert data["max_queue_delay_ms"] == 2.5 and data["max_queue_rows"] == 100
    notes = "\n".join(data["triton"].notes)
    for word in ("preferred_batch_size", "preserve_ordering", "priorit", "max_queue_size", "timeout"):
        assert word in notes, notes


def test_instance_groups_map_onto_workers_and_device(tmp_path):
    assert _toml(tmp_path, "instance_group [{ count: 3 kind: KIND_CPU }]") | {"triton": None} == {
        "max_batch_size": 0, "max_workers": 3, "device": "cpu", "triton": None}
    data = _toml(tmp_path, "instance_group [{ count: 2 kind: KIND_GPU gpus: [1] }, { kind: KIND_GPU gpus: [1] }]")
    assert data["max_workers"] == 3 and data["device"] == "cuda:1"
    assert _toml(tmp_path, "instance_group [{ kind: KIND_GPU }]")["device"] == "auto"
    assert "rate limiter" in _toml(tmp_path, "instance_group [{ rate_limiter { priority: 2 } }]")["triton"].notes[0]


@pytest.mark.parametrize("text, policy", [
    ("version_policy { all { } }", "all"), ("version_policy { latest { num_versions: 2 } }", {"latest": 2}),
    ("version_policy { specific { versions: [1, 3] } }", {"specific": [1, 3]}),
])
def test_version_policies_map(tmp_path, text, policy):
    data = _toml(tmp_path, text)
    assert data["version_policy"] == policy
    path = tmp_path / "m" / "config.pbtxt"
    assert load_model_config(path, ModelSettings()).version_policy.select([1, 2, 3]) == {
        "all": [1, 2, 3], 2: [2, 3]}.get(policy if policy == "all" else policy.get("latest"), [1, 3])


def test_sequence_batching_defaults_to_direct_and_a_python_model_declares_its_controls(tmp_path):
    data = _toml(tmp_path, """backend: "python" max_batch_size: 4
        input [{ name: "INPUT" data_type: TYPE_INT32 dims: [1] }]
        sequence_batching { max_sequence_idle_microseconds: 600000000 direct { max_queue_delay_microseconds: 100 }
          control_input [{ name: "START" control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] }] },
                         { name: "ID" control [{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING }] }] }""")
    assert data["sequence_batching"]["strategy"] == "direct"
    assert data["idle_timeout_s"] == 600  # an idle worker outlives its sequences
    assert data["inputs"][1:] == [{"name": "START", "datatype": "FP32", "shape": [-1, 1]},
                                  {"name": "ID", "datatype": "BYTES", "shape": [-1, 1]}]
    assert any("direct.max_queue_delay_microseconds" in n for n in data["triton"].notes)
    config = load_model_config(tmp_path / "m" / "config.pbtxt", ModelSettings())
    assert config.sequence_batching.corrid.datatype == "BYTES"


def test_parameters_decoupled_warmup_and_hints(tmp_path):
    data = _toml(tmp_path, """backend: "python" parameters { key: "k" value { string_value: "v" } }
        model_transaction_policy { decoupled: true } default_model_filename: "net.py"
        model_warmup [{ name: "w" batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: [1] zero_data: true } } }]
        optimization { graph { level: 1 } } response_cache { enable: true } metric_tags { key: "a" value: "b" }""")
    assert data["parameters"] == {"k": "v"} and data["decoupled"] is True
    assert data["triton"].default_model_filename == "net.py"
    notes = "\n".join(data["triton"].notes)
    for word in ("warms every model up", "performance hint", "does not cache", "metric_tags"):
        assert word in notes, notes


def test_a_directory_with_both_config_files_is_told_to_choose_one(tmp_path):
    (tmp_path / "config.pbtxt").write_text('backend: "python"')
    (tmp_path / "config.toml").write_text("max_batch_size = 2\n")
    for name in ("config.pbtxt", "config.toml"):
        with pytest.raises(ConfigError, match="choose one"):
            load_model_config(tmp_path / name, ModelSettings())
