"""scan() over Triton model directories (config.pbtxt): the platform's model file or the
config's default_model_filename, its version_policy, ensembles as pipelines, and a reason for
every version that cannot be served (never silently invisible)."""

from __future__ import annotations

import shutil
from pathlib import Path

from inferd.daemon.models.scan import scan

REPOSITORY = Path(__file__).resolve().parents[1] / "triton_repository"


def _model(root: Path, name: str, config: str, files: dict[str, bytes | None]) -> None:
    """`files`: path in the model's directory -> content (None: a directory)."""
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "config.pbtxt").write_text(config)
    for path, content in files.items():
        target = root / name / path
        if content is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


def test_the_quickstart_repository_scans_with_every_model_file(tmp_path):
    root = tmp_path / "models"
    shutil.copytree(REPOSITORY, root)
    found = scan(root)
    assert {k: (f.path.name, f.config_path.name) for k, f in found.items() if f.path} == {
        (name, "1"): ("model.py" if name == "simple_identity" else "model.onnx", "config.pbtxt")
        for name in ("simple", "simple_dyna_sequence", "simple_identity", "simple_int8", "simple_sequence", "simple_string")}
    assert not any(f.problem for f in found.values())  # densenet/inception have no file: not models yet


def test_the_platform_picks_its_file_and_a_mismatch_is_a_reason(tmp_path):
    _model(tmp_path, "a", 'platform: "onnxruntime_onnx"', {"1/model.onnx": b"x", "1/model.py": b"y"})
    _model(tmp_path, "b", 'backend: "python"', {"1/model.onnx": b"x"})
    _model(tmp_path, "c", 'platform: "pytorch_libtorch"', {"1/model.pt": b"x"})
    found = scan(tmp_path)
    assert found[("a", "1")].path.name == "model.onnx" and not found[("a", "1")].problem
    assert found[("b", "1")].path is None and "platform python needs model.py, found model.onnx" in found[("b", "1")].problem
    assert found[("c", "1")].path.name == "model.pt"


def test_default_model_filename_names_the_versions_file(tmp_path):
    _model(tmp_path, "m", 'platform: "onnxruntime_onnx" default_model_filename: "net.onnx"',
           {"1/net.onnx": b"x", "2/model.onnx": b"y"})
    found = scan(tmp_path)
    assert list(found) == [("m", "1")] and found[("m", "1")].path.name == "net.onnx"


def test_unsupported_platform_files_are_found_with_the_reason(tmp_path):
    _model(tmp_path, "trt", 'platform: "tensorrt_plan"', {"1/model.plan": b"x"})
    _model(tmp_path, "tf", 'platform: "tensorflow_savedmodel"', {"1/model.savedmodel": None, "1/model.savedmodel/x.pb": b"x"})
    _model(tmp_path, "gd", "", {"1/model.graphdef": b"x"})
    _model(tmp_path, "empty", 'platform: "tensorrt_plan"', {"1": None})
    found = scan(tmp_path)
    for name, platform in (("trt", "tensorrt_plan"), ("tf", "tensorflow_savedmodel"), ("gd", "tensorflow_graphdef"),
                           ("empty", "tensorrt_plan")):
        item = found[(name, "1")]
        assert item.path is None and f"platform '{platform}' is not supported by inferd" in item.problem, (name, item)


def test_version_policy_comes_from_the_pbtxt(tmp_path):
    files = {f"{v}/model.onnx": b"x" for v in (1, 2, 3)}
    _model(tmp_path, "latest", 'version_policy { latest { num_versions: 2 } }', files)
    _model(tmp_path, "specific", 'version_policy { specific { versions: [1, 3] } }', files)
    _model(tmp_path, "default", "", files)
    found = scan(tmp_path)
    assert sorted(k for k in found if k[0] == "latest") == [("latest", "2"), ("latest", "3")]
    assert sorted(k for k in found if k[0] == "specific") == [("specific", "1"), ("specific", "3")]
    assert [k for k in found if k[0] == "default"] == [("default", "3")]


def test_a_broken_pbtxt_keeps_every_version_so_loading_reports_it(tmp_path):
    _model(tmp_path, "m", "max_batch_size: [broken", {"1/model.onnx": b"x", "2/model.onnx": b"y"})
    assert sorted(scan(tmp_path)) == [("m", "1"), ("m", "2")]


def test_an_ensemble_with_its_empty_version_directory_is_a_pipeline(tmp_path):
    _model(tmp_path, "ens", 'platform: "ensemble" ensemble_scheduling { step [{ model_name: "a" }] }', {"1": None})
    [item] = scan(tmp_path).values()
    assert item.pipeline and item.path is None and item.config_path.name == "config.pbtxt" and not item.problem


def test_both_config_files_are_one_reason_choose_one(tmp_path):
    _model(tmp_path, "m", 'platform: "onnxruntime_onnx"', {"1/model.onnx": b"x", "config.toml": b"max_batch_size = 2\n"})
    [item] = scan(tmp_path).values()
    assert item.path is None and "choose one" in item.problem


def test_a_hostile_default_model_filename_falls_back_to_model_ext_and_loading_says_why(tmp_path):
    _model(tmp_path, "m", 'default_model_filename: "../../etc/passwd\\000"', {"1/model.onnx": b"x"})
    [item] = scan(tmp_path).values()
    assert item.path.name == "model.onnx"
