"""The models directory's new formats as scan() reads them: lone files of every framework,
directory models (a SavedModel in a version directory, an MLflow model as the model's
directory or a version), their stamps and completeness, and the trust rules for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.common.errors import InferdError
from inferd.daemon.models.scan import diff, scan, settled
from inferd.daemon.models.upload import check_files


def _touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _savedmodel(vdir: Path) -> Path:
    _touch(vdir / "model.savedmodel" / "saved_model.pb", b"graph")
    _touch(vdir / "model.savedmodel" / "variables" / "variables.index", b"index")
    _touch(vdir / "model.savedmodel" / "variables" / "variables.data-00000-of-00001", b"data")
    return vdir / "model.savedmodel"


def _mlflow(directory: Path) -> Path:
    _touch(directory / "MLmodel", b"flavors:\n  python_function: {}\n")
    _touch(directory / "model.pkl", b"\x80\x05N.")
    _touch(directory / "requirements.txt", b"scikit-learn\n")
    return directory


def test_lone_files_of_every_framework_are_version_1(tmp_path):
    names = ["a.joblib", "b.pkl", "c.pickle", "d.skops", "e.ubj", "f.json", "g.txt", "h.cbm", "i.keras"]
    for name in names:
        _touch(tmp_path / name)
    snap = scan(tmp_path)
    assert set(snap) == {(n.split(".")[0], "1") for n in names}
    assert snap[("f", "1")].path == tmp_path / "f.json"


def test_model_files_of_every_framework_in_version_directories(tmp_path):
    for i, ext in enumerate(["joblib", "skops", "ubj", "json", "txt", "cbm", "keras"], start=1):
        _touch(tmp_path / "m" / str(i) / f"model.{ext}")
    snap = scan(tmp_path, only="m")
    assert set(snap) == {("m", "7")}  # the default policy: the newest
    assert snap[("m", "7")].path.name == "model.keras"


def test_a_savedmodel_directory_is_the_versions_model_stamped_by_all_its_files(tmp_path):
    saved = _savedmodel(tmp_path / "tf" / "1")
    _touch(tmp_path / "tf" / "1" / "model.savedmodel" / ".hidden", b"not part of it")
    found = scan(tmp_path)[("tf", "1")]
    assert found.path == saved and found.problem == ""
    assert [p.relative_to(saved).as_posix() for p in found.members] == [
        "saved_model.pb", "variables/variables.data-00000-of-00001", "variables/variables.index"]
    assert set(found.files) == {saved, *found.members}
    # A rewritten file inside changes the version (a reload), and so does one more file.
    before = scan(tmp_path)
    _touch(saved / "variables" / "variables.index", b"index, longer")
    after = scan(tmp_path)
    assert [(c.kind, c.found.key) for c in diff(before, after)] == [("file changed", ("tf", "1"))]
    _touch(saved / "assets" / "vocab.txt", b"a\nb\n")
    assert [c.kind for c in diff(after, scan(tmp_path))] == ["file changed"]


def test_a_directory_model_with_any_file_in_flux_is_left_out_until_complete(tmp_path):
    saved = _savedmodel(tmp_path / "tf" / "1")
    data = saved / "variables" / "variables.data-00000-of-00001"
    assert scan(tmp_path, lambda p: p != data) == {}
    assert scan(tmp_path, lambda p: p != saved) == {}  # the directory itself just moved in
    _touch(saved / "variables" / "variables.index.part", b"still copied")
    assert scan(tmp_path) == {}
    (saved / "variables" / "variables.index.part").unlink()
    (saved / "saved_model.pb").rename(saved / "saved_model.pb.part")  # its graph not there yet
    assert scan(tmp_path) == {}
    (saved / "saved_model.pb.part").rename(saved / "saved_model.pb")
    # Version 2 is still being copied: the policy picks version 1, the complete one.
    _savedmodel(tmp_path / "tf" / "2")
    copying = tmp_path / "tf" / "2" / "model.savedmodel" / "saved_model.pb"
    assert set(scan(tmp_path, lambda p: p != copying)) == {("tf", "1")}


def test_settled_keeps_a_serving_directory_model_while_a_file_in_it_is_rewritten(tmp_path):
    saved = _savedmodel(tmp_path / "tf" / "1")
    serving = scan(tmp_path)
    index = saved / "variables" / "variables.index"
    now = scan(tmp_path, lambda p: p != index)
    assert now == {}
    assert settled(serving, now, lambda p: p != index) == serving


def test_an_mlflow_directory_is_the_model_version_1_or_a_version(tmp_path):
    flow = _mlflow(tmp_path / "flow")
    _touch(flow / "config.toml", b"max_batch_size = 8\n")
    found = scan(tmp_path)[("flow", "1")]
    assert found.path == flow and found.config_path == flow / "config.toml"
    assert [p.name for p in found.members] == ["MLmodel", "model.pkl", "requirements.txt"]  # not config.toml
    _mlflow(tmp_path / "versioned" / "2")
    _mlflow(tmp_path / "versioned" / "3")
    snap = scan(tmp_path, only="versioned")
    assert set(snap) == {("versioned", "3")} and snap[("versioned", "3")].path == tmp_path / "versioned" / "3"
    # Still being copied: not a model yet.
    partial = _mlflow(tmp_path / "copying")
    assert ("copying", "1") not in scan(tmp_path, lambda p: p != partial / "model.pkl")


def test_what_a_version_directory_holds_decides_and_a_tf_serving_layout_is_explained(tmp_path):
    _savedmodel(tmp_path / "two" / "1")
    _touch(tmp_path / "two" / "1" / "model.onnx")
    assert "must hold exactly one model.<ext> or model.savedmodel/, found 2" in scan(tmp_path)[("two", "1")].problem
    _touch(tmp_path / "serving" / "1" / "saved_model.pb")
    _touch(tmp_path / "serving" / "1" / "variables" / "variables.index")
    assert scan(tmp_path)[("serving", "1")].problem == (
        "serving/1 holds a SavedModel's files: inferd loads a SavedModel from 1/model.savedmodel/ (Triton's layout); "
        "move them there")


def test_pickles_and_directory_models_follow_the_code_trust_rules_skops_and_trees_do_not(tmp_path):
    root = tmp_path / "models"
    for name in ("m.joblib", "m2.pkl", "k.keras", "s.skops", "x.ubj", "c.cbm", "j.json", "l.txt"):
        _touch(root / name).chmod(0o664)
    flow = _mlflow(root / "flow")
    (flow / "model.pkl").chmod(0o646)
    saved = _savedmodel(root / "tf" / "1")
    (saved / "variables").chmod(0o777)
    _savedmodel(root / "ok" / "1")
    found = scan(root)
    for name in ("m", "m2", "k"):
        assert "is writable by its group; refusing to run code that others could change" in found[(name, "1")].problem
        assert found[(name, "1")].untrusted
    for name in ("s", "x", "c", "j", "l"):
        assert found[(name, "1")].problem == "" and not found[(name, "1")].untrusted
    assert found[("flow", "1")].problem.startswith("flow/model.pkl is writable by other users; refusing to run code")
    assert found[("tf", "1")].problem.startswith("tf/1/model.savedmodel/variables is writable by other users")
    assert found[("ok", "1")].problem == ""


@pytest.mark.parametrize("path", ["1/model.pkl", "1/model.joblib", "1/model.keras", "1/MLmodel",
                                  "1/model.savedmodel/saved_model.pb"])
def test_a_load_request_cannot_write_models_that_run_code(path):
    with pytest.raises(InferdError) as e:
        check_files("m", {path: b"x"})
    assert "would run code when loaded" in str(e.value)


def test_a_load_request_may_write_data_models_of_the_new_formats():
    for path in ("1/model.skops", "1/model.ubj", "1/model.json", "1/model.txt", "1/model.cbm"):
        assert check_files("m", {path: b"x"}) is None  # (it raises to refuse)


def test_a_directory_models_size_on_disk_is_all_its_files(tmp_path):
    _savedmodel(tmp_path / "tf" / "1")
    _touch(tmp_path / "lone.onnx", b"12345")
    snap = scan(tmp_path)
    assert snap[("tf", "1")].disk_bytes() == len(b"graph") + len(b"index") + len(b"data")
    assert snap[("lone", "1")].disk_bytes() == 5
